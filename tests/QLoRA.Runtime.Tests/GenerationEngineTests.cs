using QLoRA.Core;
using QLoRA.Core.Peft;
using QLoRA.Runtime.Engine;
using QLoRA.Runtime.Generation;
using QLoRA.Runtime.Layers;
using QLoRA.Runtime.Models;

namespace QLoRA.Runtime.Tests;

/// <summary>
/// The generation engine on the tiny Llama: greedy output against a full-recompute argmax loop, batch = one by one
/// (greedy and seeded sampling), continuous batching with arrivals and departures, cancellation, stop tokens, and
/// several adapters in one batch against each adapter alone and against the float64 model with that adapter.
/// </summary>
public abstract class GenerationEngineTests<TDevice>(TDevice fixture) : IClassFixture<TDevice>
    where TDevice : DeviceFixture
{
    private static readonly int[][] Prompts = [[3, 17, 42, 0, 9], [7], [30, 8, 1, 12, 19, 22, 4, 4, 6, 33, 21, 2, 5], [11, 11, 2]];

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private static GenerationEngineOptions Small(int batch = 4) => new() { MaxBatch = batch, MaxSequenceLength = 64, PageTokens = 4, StepTokens = 8 };

    // Greedy decoding written plainly: recompute the whole prefix each token and take the argmax (lowest id on ties).
    private static int[] ReferenceGreedy(EngineModel model, int[] prompt, int count)
    {
        var ids = prompt.ToList();
        int vocab = model.Config.VocabSize;
        for (int i = 0; i < count; i++)
        {
            float[] logits = model.Logits([.. ids]);
            int best = 0;
            for (int v = 1; v < vocab; v++)
            {
                best = logits[((ids.Count - 1) * vocab) + v] > logits[((ids.Count - 1) * vocab) + best] ? v : best;
            }

            ids.Add(best);
        }

        return [.. ids.Skip(prompt.Length)];
    }

    [Fact]
    public void GreedyEqualsFullRecomputeAndBatchEqualsAlone()
    {
        (string folder, _) = TinyLlama.WriteCheckpoint();
        using LlamaForCausalLM llama = LlamaForCausalLM.LoadModel(fixture.Device, folder);
        EngineModel model = EngineModel.Of(llama);
        using var engine = new GenerationEngine(model, Small());
        var requests = Prompts.Select((p, i) => new GenerationRequest(p) { MaxTokens = 6 + (3 * i) }).ToList();
        var alone = requests.Select(r => engine.Generate(r, Ct)).ToList();
        for (int i = 0; i < requests.Count; i++)
        {
            Assert.Equal(ReferenceGreedy(model, Prompts[i], requests[i].MaxTokens), alone[i].Ids);
            Assert.Equal(FinishReason.Length, alone[i].Reason);
        }

        var batched = engine.GenerateBatch(requests, Ct);
        for (int i = 0; i < requests.Count; i++)
        {
            Assert.Equal(alone[i].Ids, batched[i].Ids);
            Assert.Equal(alone[i].LogProbs, batched[i].LogProbs);
        }

        Assert.Equal(engine.Cache.PageCount, engine.Cache.FreePages);

        // Decode steps replay captured CUDA graphs on a GPU (and equal the plain launches above); plain launches here.
        if (fixture.Device.Kind == QLoRA.Runtime.Devices.DeviceKind.Cuda)
        {
            Assert.True(engine.CapturedGraphs > 0, "no decode step was captured as a CUDA graph");
            using var plain = new GenerationEngine(model, Small() with { CudaGraphs = false });
            Assert.All(requests, r => Assert.Equal(plain.Generate(r, Ct).Ids, engine.Generate(r, Ct).Ids));
            Assert.Equal(0, plain.CapturedGraphs);
        }
        else
        {
            Assert.Equal(0, engine.CapturedGraphs);
        }
    }

    [Fact]
    public void ContinuousBatchingGivesEachSequenceItsOwnTokens()
    {
        (string folder, _) = TinyLlama.WriteCheckpoint();
        using LlamaForCausalLM llama = LlamaForCausalLM.LoadModel(fixture.Device, folder);
        EngineModel model = EngineModel.Of(llama);

        // Two places in the batch for eight requests of different lengths and options: sequences leave and others join.
        var requests = Enumerable.Range(0, 8).Select(i => new GenerationRequest(Prompts[i % Prompts.Length])
        {
            MaxTokens = 3 + (i * 2 % 7),
            Sampling = i % 2 == 0 ? SamplingOptions.Greedy : new SamplingOptions { Temperature = 0.8, TopK = 20, TopP = 0.9, Seed = (ulong)i, RepetitionPenalty = i == 3 ? 1.2 : 1 },
        }).ToList();
        using var single = new GenerationEngine(model, Small(batch: 1));
        var alone = requests.Select(r => single.Generate(r, Ct)).ToList();
        using var shared = new GenerationEngine(model, Small(batch: 2));
        var together = shared.GenerateBatch(requests, Ct);
        for (int i = 0; i < requests.Count; i++)
        {
            Assert.Equal(alone[i].Ids, together[i].Ids);
        }

        Assert.True(shared.Steps < single.Steps, $"{shared.Steps} steps batched vs {single.Steps} alone");
        Assert.Equal(shared.Cache.PageCount, shared.Cache.FreePages);
    }

    [Fact]
    public async Task CancellationStopsWithinAStepAndFreesPages()
    {
        (string folder, _) = TinyLlama.WriteCheckpoint();
        using LlamaForCausalLM llama = LlamaForCausalLM.LoadModel(fixture.Device, folder);
        using var engine = new GenerationEngine(EngineModel.Of(llama), Small());
        using var cts = new CancellationTokenSource();
        var received = new List<int>();
        await foreach (GeneratedToken token in engine.StreamAsync(new GenerationRequest(Prompts[0]) { MaxTokens = 50 }, cts.Token))
        {
            received.Add(token.Id);
            if (received.Count == 3)
            {
                cts.Cancel();
                break;
            }
        }

        var sw = System.Diagnostics.Stopwatch.StartNew();
        while (engine.Cache.FreePages != engine.Cache.PageCount && sw.Elapsed < TimeSpan.FromSeconds(10))
        {
            await Task.Delay(5, Ct);
        }

        Assert.Equal(engine.Cache.PageCount, engine.Cache.FreePages);

        // Cancelled through the token of GenerateAsync: the result says so and holds what was generated.
        using var later = new CancellationTokenSource();
        var (tokens, result) = engine.Start(new GenerationRequest(Prompts[2]) { MaxTokens = 50 }, later.Token);
        await tokens.ReadAsync(Ct);
        later.Cancel();
        GenerationResult r = await result;
        Assert.Equal(FinishReason.Cancelled, r.Reason);
        Assert.InRange(r.Ids.Count, 1, 3);
    }

    [Fact]
    public void StopTokensEndTheSequence()
    {
        (string folder, _) = TinyLlama.WriteCheckpoint();
        using LlamaForCausalLM llama = LlamaForCausalLM.LoadModel(fixture.Device, folder);
        EngineModel model = EngineModel.Of(llama);
        int[] greedy = ReferenceGreedy(model, Prompts[0], 8);
        using var engine = new GenerationEngine(model, Small());
        GenerationResult r = engine.Generate(new GenerationRequest(Prompts[0]) { MaxTokens = 8, StopTokenIds = [greedy[4], 1000] }, Ct);
        int first = Array.IndexOf(greedy, greedy[4]);
        Assert.Equal(greedy[..first], r.Ids);
        Assert.Equal(FinishReason.Stop, r.Reason);
        Assert.Equal(greedy[4], r.StopTokenId);
        Assert.Throws<ArgumentException>(() => engine.Generate(new GenerationRequest([3, 99]), Ct)); // outside the vocabulary
        Assert.Throws<ArgumentException>(() => engine.Generate(new GenerationRequest([3]) { Adapter = "missing" }, Ct));
    }

    [Fact]
    public void AdaptersServeSideBySide()
    {
        (string folder, TinyLlama.Weights weights) = TinyLlama.WriteCheckpoint();
        using LlamaForCausalLM llama = LlamaForCausalLM.LoadModel(fixture.Device, folder);
        EngineModel model = EngineModel.Of(llama);
        (LoraAdapter first, var firstRef) = Adapter(model, 1, ["q_proj", "v_proj", "down_proj"]);
        (LoraAdapter second, var secondRef) = Adapter(model, 2, ["k_proj", "o_proj", "gate_proj", "up_proj"]);
        using var engine = new GenerationEngine(model, Small());
        engine.Adapters.Add("first", first);
        engine.Adapters.Add("second", second);
        Assert.Equal(["first", "second"], engine.Adapters.Names);

        // Greedy with each adapter alone equals the float64 model with that adapter (first tokens, away from ties).
        string?[] choice = [null, "first", "second", "first"];
        var requests = Prompts.Select((p, i) => new GenerationRequest(p) { MaxTokens = 5, Adapter = choice[i] }).ToList();
        var alone = requests.Select(r => engine.Generate(r, Ct)).ToList();
        for (int i = 0; i < requests.Count; i++)
        {
            var lora = choice[i] switch { "first" => firstRef, "second" => secondRef, _ => null };
            double[] reference = TinyLlama.Reference(weights, Prompts[i], lora: lora);
            int last = Prompts[i].Length - 1, vocab = TinyLlama.Vocab;
            int best = Enumerable.Range(0, vocab).MaxBy(v => reference[(last * vocab) + v]);
            Assert.Equal(best, alone[i].Ids[0]);
        }

        Assert.NotEqual(alone[1].Ids, engine.Generate(requests[1] with { Adapter = null }, Ct).Ids);
        var batched = engine.GenerateBatch(requests, Ct);
        for (int i = 0; i < requests.Count; i++)
        {
            Assert.Equal(alone[i].Ids, batched[i].Ids);
        }

        // On a GPU, decode steps with adapters take the fused launches and replay captured graphs (one per batch size and
        // set of adapters); they equal the plain launches.
        if (fixture.Device.Kind == QLoRA.Runtime.Devices.DeviceKind.Cuda)
        {
            Assert.True(engine.CapturedGraphs > 0, "no decode step with adapters was captured as a CUDA graph");
            using var plain = new GenerationEngine(model, Small() with { CudaGraphs = false });
            plain.Adapters.Add("first", first);
            plain.Adapters.Add("second", second);
            Assert.All(requests, r => Assert.Equal(plain.Generate(r, Ct).Ids, engine.Generate(r, Ct).Ids));
        }

        // Unloaded: new requests cannot name it; the base is untouched.
        Assert.True(engine.Adapters.Unload("first"));
        Assert.Throws<ArgumentException>(() => engine.Generate(requests[1], Ct));
        Assert.Equal(alone[0].Ids, engine.Generate(requests[0], Ct).Ids);
    }

    [Fact]
    public void WeightsAndCacheShowInTheAllocatorsFigures()
    {
        (string folder, _) = TinyLlama.WriteCheckpoint();
        long before = fixture.Device.Allocator.AllocatedBytes;
        using LlamaForCausalLM llama = LlamaForCausalLM.LoadModel(fixture.Device, folder);
        EngineModel model = EngineModel.Of(llama);
        long weights = model.Projections().Sum(p => p.Layer.WeightBytes);
        Assert.True(fixture.Device.Allocator.AllocatedBytes - before >= weights, $"{fixture.Device.Allocator.AllocatedBytes - before} bytes allocated for {weights} bytes of 4-bit weights");
        long loaded = fixture.Device.Allocator.AllocatedBytes;
        using var engine = new GenerationEngine(model, Small());
        Assert.True(fixture.Device.Allocator.AllocatedBytes - loaded >= engine.DeviceBytes, "the cache and the arena come from the allocator");
    }

    [Fact]
    public void MergedEqualsUnmergedWithinTheMergesRounding()
    {
        // Merged mode for a single adapter: W + s·BA rounded once to bf16 (LoraMerger) against the dense base with the
        // adapter served beside it. The merge's only error is that rounding (≤ 2⁻⁹ relative per weight), far below the
        // adapter's own effect on the logits.
        (string folder, _) = TinyLlama.WriteCheckpoint();
        var dense = new QLoRA.Modeling.LoadOptions(KeepProjectionsDense: true);
        using LlamaForCausalLM llama = LlamaForCausalLM.LoadModel(fixture.Device, folder, dense);
        EngineModel model = EngineModel.Of(llama);
        (LoraAdapter adapter, _) = Adapter(model, 3, ["q_proj", "v_proj", "o_proj", "up_proj", "down_proj"]);
        string merged = Path.Combine(Directory.CreateTempSubdirectory("qlora-merged-").FullName, "merged");
        LoraMerger.Merge(folder, adapter, merged, new MergeOptions { TrainedOnQuantized = null }); // the adapter was served on the dense base
        using LlamaForCausalLM mergedModel = LlamaForCausalLM.LoadModel(fixture.Device, merged, dense);

        int[] ids = [3, 17, 42, 0, 9, 9, 31, 5, 11, 2];
        float[] baseLogits = Scorer.Score(model, ids).Logits;
        float[] mergedLogits = Scorer.Score(EngineModel.Of(mergedModel), ids).Logits;
        LoraAttachment.AttachSaved(fixture.Device, llama.EnumerateLayers(), adapter);
        float[] unmerged = Scorer.Score(model, ids).Logits;
        double effect = unmerged.Zip(baseLogits, (a, b) => Math.Abs(a - b)).Max();
        double error = unmerged.Zip(mergedLogits, (a, b) => Math.Abs(a - b)).Max();
        Assert.True(effect > 0.1, $"the adapter changes the logits by {effect}");
        Assert.True(error < 0.02 * effect, $"merged vs unmerged {error}, adapter effect {effect}");

        // And generation agrees: the same greedy tokens.
        using var unmergedEngine = new GenerationEngine(model, Small());
        using var mergedEngine = new GenerationEngine(EngineModel.Of(mergedModel), Small());
        var request = new GenerationRequest(ids) { MaxTokens = 8 };
        Assert.Equal(unmergedEngine.Generate(request, Ct).Ids, mergedEngine.Generate(request, Ct).Ids);
    }

    private static (LoraAdapter Adapter, Dictionary<string, TinyLlama.LoraRef> Reference) Adapter(EngineModel model, int seed, string[] targets) =>
        RandomAdapters.For(model, seed, targets);
}

/// <summary><see cref="GenerationEngineTests{TDevice}"/> on the CPU accelerator.</summary>
public sealed class GenerationEngineTestsOnCpu(CpuDeviceFixture fixture) : GenerationEngineTests<CpuDeviceFixture>(fixture);

/// <summary><see cref="GenerationEngineTests{TDevice}"/> on CUDA (skipped without a CUDA device).</summary>
public sealed class GenerationEngineTestsOnCuda(CudaDeviceFixture fixture) : GenerationEngineTests<CudaDeviceFixture>(fixture);

/// <summary><see cref="GenerationEngineTests{TDevice}"/> on the GPU schedules' kernels (fused decode, paged attention), emulated on the CPU accelerator.</summary>
public sealed class GenerationEngineTestsOnGpuKernels(CpuGpuKernelsDeviceFixture fixture) : GenerationEngineTests<CpuGpuKernelsDeviceFixture>(fixture);
