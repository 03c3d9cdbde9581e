using QLoRA.Core;
using QLoRA.Core.Peft;
using QLoRA.Runtime.Devices;
using QLoRA.Runtime.Engine;
using QLoRA.Runtime.Generation;
using QLoRA.Runtime.Layers;
using QLoRA.Runtime.Models;

namespace QLoRA.Runtime.Tests;

/// <summary>
/// Decode steps with serving adapters on the fused launches (the GPU kernels on the CPU accelerator: 4-lane warps in
/// groups of two): each row's logits equal the float64 model with that row's adapter and the plain path (base GEMV +
/// separate LoRA products) within float32 rounding; a row's logits do not depend on the batch around it (bit for bit,
/// also the rows without an adapter against a step without adapters); and a block still issues 8 launches.
/// </summary>
public sealed class FusedAdapterDecodeTests
{
    private static readonly int[][] Prompts = [[3, 17, 42, 0, 9, 5], [7, 2], [30, 8, 1, 12, 19, 22, 4, 4, 6, 33, 21, 2], [11, 11, 2, 40]];
    private static readonly string?[] Choice = ["first", null, "second", "first"];

    private static Device Emulated() => Device.Cpu(4, 2, multiprocessors: 2, cpuSchedules: false);

    private static (LoraAdapter Adapter, Dictionary<string, TinyLlama.LoraRef> Reference) Adapter(EngineModel model, int seed, int rank, string[] targets) =>
        RandomAdapters.For(model, seed, targets, rank);

    private static readonly string[] All = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

    // Prefills every sequence but its last token alone, then decodes the last tokens of the sequences in `together`
    // in one step; returns each decoded sequence's logits row.
    private static Dictionary<int, float[]> Decode(EngineModel model, IReadOnlyDictionary<string, ServingAdapter> adapters, int[] together, bool fused, out StepReport report)
    {
        using KvCache cache = KvCache.For(model, 128, pageTokens: 4);
        using var runner = new StepRunner(model, cache, maxRows: 16, maxSequences: 4, maxPages: 8) { Fused = fused };
        var kv = Prompts.Select(_ => new KvSequence()).ToArray();
        ServingAdapter? Of(int s) => Choice[s] is string name ? adapters[name] : null;
        foreach (int s in together)
        {
            Assert.True(cache.TryReserve(kv[s], Prompts[s].Length));
            runner.Run([new StepPiece(kv[s], Prompts[s][..^1], Of(s))]);
        }

        Device device = model.Embed.Table.Device;
        long before = device.LaunchCount;
        float[] logits = runner.Run([.. together.Select(s => new StepPiece(kv[s], [Prompts[s][^1]], Of(s)))]).ToHost<float>();
        report = new StepReport(device.LaunchCount - before, runner.LastStepFusedAdapters);
        int vocab = model.Config.VocabSize;
        return together.Select((s, i) => (s, logits[(i * vocab)..((i + 1) * vocab)])).ToDictionary(p => p.s, p => p.Item2);
    }

    [Theory]
    [InlineData(false, false, DType.F32)]
    [InlineData(true, false, DType.F32)] // qwen2: q/k/v biases, added before the delta
    [InlineData(false, true, DType.F32)] // llama's attention_bias: o_proj's bias too, in the GEMV that shrinks
    [InlineData(false, false, DType.BF16)]
    public void FusedAdaptersEqualTheFloat64ModelAndThePlainPathAndDoNotDependOnTheBatch(bool qwen, bool attentionBias, DType compute)
    {
        (string folder, TinyLlama.Weights weights) = TinyLlama.WriteCheckpoint(qwen: qwen, attentionBias: attentionBias);
        using Device device = Emulated();
        device.ComputeDtype = compute;
        using LlamaForCausalLM llama = LlamaForCausalLM.LoadModel(device, folder);
        EngineModel model = EngineModel.Of(llama);
        (LoraAdapter first, var firstRef) = Adapter(model, 1, 4, ["q_proj", "v_proj", "down_proj"]);
        (LoraAdapter second, var secondRef) = Adapter(model, 2, 8, All); // another rank: the shrink buffers' stride is the largest
        var adapters = new Dictionary<string, ServingAdapter> { ["first"] = ServingAdapter.Create(model, "first", first), ["second"] = ServingAdapter.Create(model, "second", second) };
        int[] everyone = [0, 1, 2, 3];

        var fused = Decode(model, adapters, everyone, fused: true, out var fusedReport);
        var plain = Decode(model, adapters, everyone, fused: false, out var plainReport);
        Assert.True(fusedReport.FusedAdapters);
        Assert.False(plainReport.FusedAdapters);
        int vocab = TinyLlama.Vocab;
        // Float32: sums over ≤ 96 terms through 2 blocks; the plain path and the fused one round differently, by a few
        // units of float32 (2⁻²⁴) in the logits' scale, and the float64 model bounds both as the engine's other step
        // tests do. bf16 (u = 2⁻⁸): every stored activation is rounded — the two paths round the LoRA delta at different
        // points (plain: x·Aᵀ rounded, then the product rounded and added; fused: one rounding of base + delta), a few u
        // per block, carried to the logits through the final norm and lm_head.
        double u = compute == DType.F32 ? Math.Pow(2, -24) : Math.Pow(2, -8);
        double plainBound = compute == DType.F32 ? 64 * u : 8 * u, referenceBound = compute == DType.F32 ? 64 * u : 16 * u;
        double worstPlain = 0, worstReference = 0;
        foreach (int s in everyone)
        {
            var lora = Choice[s] switch { "first" => firstRef, "second" => secondRef, _ => null };
            double[] reference = TinyLlama.Reference(weights, Prompts[s], lora: lora);
            double[] baseOnly = TinyLlama.Reference(weights, Prompts[s]);
            int last = Prompts[s].Length - 1;
            double scale = Enumerable.Range(0, vocab).Max(j => Math.Abs(reference[(last * vocab) + j]));
            double effect = Enumerable.Range(0, vocab).Max(j => Math.Abs(reference[(last * vocab) + j] - baseOnly[(last * vocab) + j]));
            Assert.True(lora is null || effect > 0.1 * scale, $"the adapter barely changes sequence {s}'s logits ({effect} of {scale})");
            for (int j = 0; j < vocab; j++)
            {
                worstPlain = Math.Max(worstPlain, Math.Abs(fused[s][j] - plain[s][j]) / (1 + scale));
                worstReference = Math.Max(worstReference, Math.Abs(fused[s][j] - reference[(last * vocab) + j]) / (1 + scale));
                Assert.True(Math.Abs(fused[s][j] - plain[s][j]) <= plainBound * (1 + scale), $"sequence {s}, logit {j}: fused {fused[s][j]} vs plain {plain[s][j]}");
                Assert.True(Math.Abs(fused[s][j] - reference[(last * vocab) + j]) <= referenceBound * (1 + scale), $"sequence {s}, logit {j}: {fused[s][j]} vs f64 {reference[(last * vocab) + j]}");
            }
        }

        TestContext.Current.TestOutputHelper?.WriteLine($"{compute}: worst |fused − plain| = {worstPlain / u:F1} u, |fused − f64| = {worstReference / u:F1} u of (1 + max|logit|)");

        // Each sequence decoded alone (an adapter row alone, or the base row alone — a step without adapters, which takes
        // the fused path without them) gives the batched row bit for bit.
        foreach (int s in everyone)
        {
            var alone = Decode(model, adapters, [s], fused: true, out var aloneReport);
            Assert.Equal(Choice[s] is not null, aloneReport.FusedAdapters);
            Assert.Equal(fused[s], alone[s]);
        }
    }

    [Fact]
    public void AStepWithAdaptersOnEveryProjectionIssuesAtMostEightLaunchesPerBlock()
    {
        (long Fused, long Plain, bool FusedAdapters) PerStep(int layers)
        {
            string folder = Directory.CreateTempSubdirectory("qlora-lora-decode-").FullName;
            RandomLlama.Write(folder, new RandomLlamaOptions(Hidden: 64, Intermediate: 96, Layers: layers, Heads: 4, KeyValueHeads: 2, Seed: 3));
            using Device device = Emulated();
            using LlamaForCausalLM llama = LlamaForCausalLM.Load(device, folder);
            EngineModel model = llama.ToEngineModel();
            var adapters = new Dictionary<string, ServingAdapter>
            {
                ["first"] = ServingAdapter.Create(model, "first", Adapter(model, 5, 4, All).Adapter),
                ["second"] = ServingAdapter.Create(model, "second", Adapter(model, 6, 8, All).Adapter),
            };
            Decode(model, adapters, [0, 1, 2, 3], fused: true, out StepReport fused);
            Decode(model, adapters, [0, 1, 2, 3], fused: false, out StepReport plain);
            return (fused.Launches, plain.Launches, fused.FusedAdapters);
        }

        var one = PerStep(1);
        var two = PerStep(2);
        long fusedPerBlock = two.Fused - one.Fused, plainPerBlock = two.Plain - one.Plain;
        Assert.True(two.FusedAdapters);
        TestContext.Current.TestOutputHelper?.WriteLine($"launches per block with adapters on all 7 projections: fused {fusedPerBlock}, plain {plainPerBlock}");
        Assert.True(fusedPerBlock <= DecodeLaunchTests.LaunchesPerBlock, $"{fusedPerBlock} launches per block with adapters (plain path: {plainPerBlock})");
        Assert.True(plainPerBlock > 2 * fusedPerBlock, $"plain {plainPerBlock} vs fused {fusedPerBlock}");
    }

    // The whole engine on the GPU kernels in bf16 — prefill chunks, fused decode steps with and without adapters,
    // sampling — as a GPU runs it: batched greedy tokens equal each request alone.
    [Fact]
    public void TheEngineGeneratesOnTheGpuKernelsInBf16()
    {
        (string folder, _) = TinyLlama.WriteCheckpoint();
        using Device device = Emulated();
        device.ComputeDtype = DType.BF16;
        using LlamaForCausalLM llama = LlamaForCausalLM.LoadModel(device, folder);
        EngineModel model = EngineModel.Of(llama);
        using var engine = new GenerationEngine(model, new GenerationEngineOptions { MaxBatch = 4, MaxSequenceLength = 48, PageTokens = 4, StepTokens = 16 });
        engine.Adapters.Add("first", Adapter(model, 1, 4, ["q_proj", "v_proj", "down_proj"]).Adapter);
        engine.Adapters.Add("second", Adapter(model, 2, 8, All).Adapter);
        var requests = Prompts.Select((p, i) => new GenerationRequest(p) { MaxTokens = 6, Adapter = Choice[i] }).ToList();
        var alone = requests.Select(r => engine.Generate(r, TestContext.Current.CancellationToken)).ToList();
        var batched = engine.GenerateBatch(requests, TestContext.Current.CancellationToken);
        for (int i = 0; i < requests.Count; i++)
        {
            Assert.Equal(6, alone[i].Ids.Count);
            Assert.Equal(alone[i].Ids, batched[i].Ids);
        }

        Assert.NotEqual(alone[0].Ids, engine.Generate(requests[0] with { Adapter = null }, TestContext.Current.CancellationToken).Ids);
    }

    private readonly record struct StepReport(long Launches, bool FusedAdapters);
}
