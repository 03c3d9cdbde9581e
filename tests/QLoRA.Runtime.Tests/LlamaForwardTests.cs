using System.Runtime.InteropServices;
using QLoRA.Core;
using QLoRA.Core.HuggingFace;
using QLoRA.Core.Numerics;
using QLoRA.Core.Quantization;
using QLoRA.Core.SafeTensors;
using QLoRA.Runtime.Models;
using QLoRA.Runtime.Ops;

namespace QLoRA.Runtime.Tests;

/// <summary>The built-in Llama (generated from its attributes) against a float64 forward written plainly here.</summary>
public abstract class LlamaForwardTests<TDevice>(TDevice fixture) : IClassFixture<TDevice>
    where TDevice : DeviceFixture
{
    private const int Hidden = TinyLlama.Hidden, Heads = TinyLlama.Heads, KvHeads = TinyLlama.KvHeads, HeadDim = TinyLlama.HeadDim, Vocab = TinyLlama.Vocab, LayerCount = TinyLlama.LayerCount, Inter = TinyLlama.Inter;

    [Fact]
    public void LogitsMatchAFloat64Forward()
    {
        (string folder, TinyLlama.Weights weights) = TinyLlama.WriteCheckpoint();
        using LlamaForCausalLM model = LlamaForCausalLM.LoadModel(fixture.Device, folder);
        int[] ids = [3, 17, 42, 0, 9, 9, 31];
        float[] logits = model.Forward(ids);
        double[] expected = TinyLlama.Reference(weights, ids);
        Assert.Equal(expected.Length, logits.Length);
        double scale = expected.Max(Math.Abs);
        for (int i = 0; i < logits.Length; i++)
        {
            Assert.True(Math.Abs(logits[i] - expected[i]) <= 1e-4 * scale, $"logit {i} (token {i / Vocab}, id {i % Vocab}): {logits[i]} vs {expected[i]} (scale {scale})");
        }

        Assert.Equal(LayerCount * 7, LlamaForCausalLM.EnumerateLoraTargets(new QLoRA.Modeling.ModelDimensions(model.Config)).Count());
    }

    // In a narrow compute dtype every activation and the dense weights are rounded (unit roundoff 2⁻⁸ for bf16, 2⁻¹¹
    // for f16) and errors compound over the layers; the logits stay within a small multiple of that, relative to their
    // RMS, and the float64 model's top token is kept wherever its margin over the runner-up is clear.
    [Theory]
    [InlineData(DType.BF16, 4e-2)]
    [InlineData(DType.F16, 6e-3)]
    public void LogitsInANarrowComputeDtypeStayCloseToFloat64(DType dtype, double relativeRms)
    {
        (string folder, TinyLlama.Weights weights) = TinyLlama.WriteCheckpoint();
        DType before = fixture.Device.ComputeDtype;
        fixture.Device.ComputeDtype = dtype;
        try
        {
            using LlamaForCausalLM model = LlamaForCausalLM.LoadModel(fixture.Device, folder);
            Assert.Equal(dtype, model.Embed.Table.Dtype);
            int[] ids = [3, 17, 42, 0, 9, 9, 31];
            float[] logits = model.Forward(ids);
            double[] expected = TinyLlama.Reference(weights, ids);
            double rms = Math.Sqrt(expected.Average(e => e * e));
            double errorRms = Math.Sqrt(expected.Select((e, i) => (logits[i] - e) * (logits[i] - e)).Average());
            Assert.True(errorRms <= relativeRms * rms, $"{dtype}: error RMS {errorRms} vs logit RMS {rms}");
            Assert.True(errorRms >= 1e-7 * rms, $"{dtype}: suspiciously exact ({errorRms}); is the narrow dtype in use?");
            for (int t = 0; t < ids.Length; t++)
            {
                double[] row = expected[(t * Vocab)..((t + 1) * Vocab)];
                int best = Array.IndexOf(row, row.Max());
                double margin = row[best] - row.Where((_, j) => j != best).Max();
                if (margin > 8 * relativeRms * rms)
                {
                    float[] got = logits[(t * Vocab)..((t + 1) * Vocab)];
                    Assert.Equal(best, Array.IndexOf(got, got.Max()));
                }
            }
        }
        finally
        {
            fixture.Device.ComputeDtype = before;
        }
    }

    [Fact]
    public void Qwen2WithQkvBiasMatchesFloat64AndAMissingBiasIsNamed()
    {
        (string folder, TinyLlama.Weights weights) = TinyLlama.WriteCheckpoint(qwen: true);
        using (LlamaForCausalLM model = LlamaForCausalLM.LoadModel(fixture.Device, folder))
        {
            int[] ids = [7, 2, 49, 11];
            float[] logits = model.Forward(ids);
            double[] expected = TinyLlama.Reference(weights, ids);
            double scale = expected.Max(Math.Abs);
            Assert.All(logits.Zip(expected), p => Assert.True(Math.Abs(p.First - p.Second) <= 1e-4 * scale, $"{p.First} vs {p.Second}"));
        }

        (string noBias, _) = TinyLlama.WriteCheckpoint(qwen: false);
        File.WriteAllText(Path.Combine(noBias, "config.json"), File.ReadAllText(Path.Combine(noBias, "config.json")).Replace("\"llama\"", "\"qwen2\"", StringComparison.Ordinal));
        var e = Assert.Throws<CheckpointFormatException>(() => LlamaForCausalLM.LoadModel(fixture.Device, noBias));
        Assert.Equal("model.layers.0.self_attn.q_proj.bias", e.ItemName);
    }

    [Fact]
    public void LoraFromTheRunConfigAndFromASavedPeftAdapter()
    {
        (string folder, TinyLlama.Weights weights) = TinyLlama.WriteCheckpoint();
        using LlamaForCausalLM model = LlamaForCausalLM.LoadModel(fixture.Device, folder);
        int[] ids = [4, 8, 15, 16];
        float[] baseLogits = model.Forward(ids);

        // Fresh adapters by the run's config: targets and rank_pattern win over the attributes' defaults; B = 0 keeps the output.
        QLoRA.Core.Peft.LoraConfig config = QLoRA.Core.Peft.LoraConfig.Parse("""{"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"], "rank_pattern": {"layers.1.self_attn.v_proj": 2}}""");
        IReadOnlyList<string> adapted = QLoRA.Runtime.Layers.LoraAttachment.AttachNew(fixture.Device, model.EnumerateLayers(), config, seed: 1);
        Assert.Equal(["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj", "model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj"], adapted);
        Assert.Equal(2, model.Layers[1].VProj.Lora!.Rank);
        Assert.Equal(2f, model.Layers[0].QProj.Lora!.Scaling);
        Assert.All(model.Layers[0].QProj.Lora!.A.ToHost<float>(), a => Assert.InRange(a, -1 / MathF.Sqrt(Hidden), 1 / MathF.Sqrt(Hidden)));
        Assert.Equal(baseLogits, model.Forward(ids));
        var trainable = model.EnumerateTrainableParameters().ToList();
        Assert.Equal(8, trainable.Count);
        Assert.Equal("model.layers.0.self_attn.q_proj.lora_A.weight", trainable[0].Name);
        Assert.Equal("model.layers.1.self_attn.v_proj.lora_B.weight", trainable[^1].Name);
        Assert.Equal([KvHeads * HeadDim, 2L], trainable[^1].Value.Shape);
        Assert.Equal(trainable[^1].Value.Shape, trainable[^1].Gradient.Shape);

        // A saved adapter on layer 0's q_proj: the output equals the float64 model with W + s·B·A merged in.
        var rng = new Random(9);
        float[] a = [.. Enumerable.Range(0, 4 * Hidden).Select(_ => (float)(rng.NextDouble() - 0.5))];
        float[] b = [.. Enumerable.Range(0, Heads * HeadDim * 4).Select(_ => (float)(rng.NextDouble() - 0.5) * 0.1f)];
        var adapter = new QLoRA.Core.Peft.LoraAdapter(QLoRA.Core.Peft.LoraConfig.Parse("""{"r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]}"""),
            [new QLoRA.Core.Peft.LoraModuleWeights("model.layers.0.self_attn.q_proj", QLoRA.Core.TensorData.FromSingle(a, 4, Hidden), QLoRA.Core.TensorData.FromSingle(b, Heads * HeadDim, 4))]);
        foreach (var layer in model.Layers)
        {
            layer.QProj.Lora = null;
            layer.VProj.Lora = null;
        }

        QLoRA.Runtime.Layers.LoraAttachment.AttachSaved(fixture.Device, model.EnumerateLayers(), adapter);
        float[] adaptedLogits = model.Forward(ids);
        (float[] w, int outF, int inF) = weights.Linear["model.layers.0.self_attn.q_proj.weight"];
        float[] merged = (float[])w.Clone();
        for (int o = 0; o < outF; o++)
        {
            for (int i = 0; i < inF; i++)
            {
                merged[(o * inF) + i] += (float)(2.0 * Enumerable.Range(0, 4).Sum(r => (double)b[(o * 4) + r] * a[(r * inF) + i]));
            }
        }

        weights.Linear["model.layers.0.self_attn.q_proj.weight"] = (merged, outF, inF);
        double[] expected = TinyLlama.Reference(weights, ids);
        double scale = expected.Max(Math.Abs);
        Assert.All(adaptedLogits.Zip(expected), p => Assert.True(Math.Abs(p.First - p.Second) <= 1e-4 * scale, $"{p.First} vs {p.Second}"));
        Assert.NotEqual(baseLogits, adaptedLogits);
    }

    [Fact]
    public void MistralSlidingWindowMatchesFloat64()
    {
        (string folder, TinyLlama.Weights weights) = TinyLlama.WriteCheckpoint(slidingWindow: 3);
        using LlamaForCausalLM model = LlamaForCausalLM.LoadModel(fixture.Device, folder);
        int[] ids = [4, 8, 15, 16, 23, 42, 7];
        float[] logits = model.Forward(ids);
        double[] expected = TinyLlama.Reference(weights, ids, window: 3);
        double scale = expected.Max(Math.Abs);
        Assert.All(logits.Zip(expected), p => Assert.True(Math.Abs(p.First - p.Second) <= 1e-4 * scale, $"{p.First} vs {p.Second}"));
        double[] unwindowed = TinyLlama.Reference(weights, ids);
        Assert.True(logits.Zip(unwindowed).Any(p => Math.Abs(p.First - p.Second) > 1e-3 * scale), "the window must change late tokens' logits");
    }

    [Fact]
    public void TiedEmbeddingsStandInForAnAbsentLmHead()
    {
        (string folder, TinyLlama.Weights weights) = TinyLlama.WriteCheckpoint(tied: true);
        using LlamaForCausalLM model = LlamaForCausalLM.LoadModel(fixture.Device, folder);
        int[] ids = [5, 1, 44];
        float[] logits = model.Forward(ids);
        double[] expected = TinyLlama.Reference(weights, ids);
        double scale = expected.Max(Math.Abs);
        Assert.All(logits.Zip(expected), p => Assert.True(Math.Abs(p.First - p.Second) <= 1e-4 * scale, $"{p.First} vs {p.Second}"));
    }

    [Fact]
    public void ProjectionsKeptDenseMatchTheFloat64ForwardOfTheStoredWeights()
    {
        (string folder, TinyLlama.Weights weights) = TinyLlama.WriteCheckpoint();
        using LlamaForCausalLM model = LlamaForCausalLM.LoadModel(fixture.Device, folder, new QLoRA.Modeling.LoadOptions(KeepProjectionsDense: true));
        Assert.Null(model.Layers[1].DownProj.Weight);
        int[] ids = [3, 17, 42, 0, 9];
        float[] logits = model.Forward(ids);
        double[] expected = TinyLlama.Reference(weights.AsLoadedDense(), ids);
        double[] quantized = TinyLlama.Reference(weights, ids);
        double scale = expected.Max(Math.Abs);
        Assert.All(logits.Zip(expected), p => Assert.True(Math.Abs(p.First - p.Second) <= 1e-4 * scale, $"{p.First} vs {p.Second}"));
        Assert.True(logits.Zip(quantized).Any(p => Math.Abs(p.First - p.Second) > 1e-2 * scale), "dense weights must differ from their NF4 round trip");
    }

    [Fact]
    public void AnAbsentLmHeadIsAnErrorUnlessTheConfigTiesTheEmbeddings()
    {
        (string folder, _) = TinyLlama.WriteCheckpoint(tied: true);
        string config = Path.Combine(folder, "config.json");
        File.WriteAllText(config, File.ReadAllText(config).Replace(",\"tie_word_embeddings\":true", "", StringComparison.Ordinal));
        var e = Assert.Throws<CheckpointFormatException>(() => LlamaForCausalLM.LoadModel(fixture.Device, folder));
        Assert.Equal("lm_head.weight", e.ItemName);
    }

    [Fact]
    public void AWrongShapeNamesTheTensorAndBothShapes()
    {
        (string folder, _) = TinyLlama.WriteCheckpoint();
        File.WriteAllText(Path.Combine(folder, "config.json"), File.ReadAllText(Path.Combine(folder, "config.json")).Replace($"\"intermediate_size\":{Inter}", "\"intermediate_size\":128", StringComparison.Ordinal));
        var e = Assert.Throws<CheckpointFormatException>(() => LlamaForCausalLM.LoadModel(fixture.Device, folder));
        Assert.Equal("model.layers.0.mlp.gate_proj.weight", e.ItemName);
        Assert.Contains("has shape [96, 64] but the model expects [128, 64]", e.Message);
    }
}

/// <summary><see cref="LlamaForwardTests{TDevice}"/> on the CPU accelerator with 2-lane warps.</summary>
public sealed class LlamaForwardTestsOnCpu(CpuDeviceFixture fixture) : LlamaForwardTests<CpuDeviceFixture>(fixture);

// Not on 32-lane CPU warps: a whole forward there takes two minutes (32 OS threads per group, ~100 launches), and every
// kernel it calls is tested at that width by its own class.

/// <summary><see cref="LlamaForwardTests{TDevice}"/> on CUDA (skipped without a CUDA device).</summary>
public sealed class LlamaForwardTestsOnCuda(CudaDeviceFixture fixture) : LlamaForwardTests<CudaDeviceFixture>(fixture);
