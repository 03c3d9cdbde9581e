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
    private const int Hidden = 64, Inter = 96, LayerCount = 2, Heads = 4, KvHeads = 2, HeadDim = 16, Vocab = 50;

    private static float[] Bf16Values(int count, int seed, double scale)
    {
        var rng = new Random(seed);
        return [.. Enumerable.Range(0, count).Select(_ => BFloat16.FromSingle((float)(((rng.NextDouble() * 2) - 1) * scale)).ToSingle())];
    }

    private static byte[] AsBf16(float[] values) => MemoryMarshal.AsBytes(values.Select(BFloat16.FromSingle).ToArray().AsSpan()).ToArray();

    private sealed record Weights(Dictionary<string, float[]> Dense, Dictionary<string, (float[] W, int Out, int In)> Linear);

    private static (string Folder, Weights W) WriteCheckpoint(bool tied = false, bool qwen = false, int slidingWindow = 0)
    {
        string dir = Directory.CreateTempSubdirectory("qlora-llama-").FullName;
        string modelType = qwen ? "qwen2" : slidingWindow > 0 ? "mistral" : "llama";
        string window = slidingWindow > 0 ? $",\"sliding_window\":{slidingWindow}" : "";
        File.WriteAllText(Path.Combine(dir, "config.json"), $$"""
            {"model_type":"{{modelType}}","hidden_size":{{Hidden}},"intermediate_size":{{Inter}},"num_hidden_layers":{{LayerCount}},"num_attention_heads":{{Heads}},
             "num_key_value_heads":{{KvHeads}},"vocab_size":{{Vocab}},"rms_norm_eps":1e-5,"rope_theta":10000.0,"max_position_embeddings":128,"torch_dtype":"bfloat16"{{window}}}
            """);
        var dense = new Dictionary<string, float[]>();
        var linear = new Dictionary<string, (float[], int, int)>();
        var entries = new List<(SafeTensorSpec, ReadOnlyMemory<byte>)>();
        int seed = 0;
        void Dense(string name, double scale, params long[] shape)
        {
            float[] v = Bf16Values((int)shape.Aggregate(1L, (a, b) => a * b), ++seed, scale);
            if (name.EndsWith("norm.weight", StringComparison.Ordinal))
            {
                v = [.. v.Select(x => BFloat16.FromSingle(1f + x).ToSingle())]; // norms near 1, as trained ones are
            }

            dense[name] = v;
            entries.Add((new SafeTensorSpec(name, DType.BF16, shape), AsBf16(v)));
        }

        void Linear(string name, int outFeatures, int inFeatures)
        {
            float[] v = Bf16Values(outFeatures * inFeatures, ++seed, 0.15);
            // The model quantizes dense weights on load with QLoRA's defaults: the reference uses those exact values.
            float[] w = QuantizedTensor.Quantize(v.Select(BFloat16.FromSingle).ToArray(), [outFeatures, inFeatures]).DequantizeToSingle();
            linear[name] = (w, outFeatures, inFeatures);
            entries.Add((new SafeTensorSpec(name, DType.BF16, [outFeatures, inFeatures]), AsBf16(v)));
        }

        Dense("model.embed_tokens.weight", 1.0, Vocab, Hidden);
        Dense("model.norm.weight", 0.1, Hidden);
        if (!tied)
        {
            Dense("lm_head.weight", 0.2, Vocab, Hidden);
        }
        else
        {
            dense["lm_head.weight"] = dense["model.embed_tokens.weight"]; // tie_word_embeddings: no lm_head tensor
        }

        for (int l = 0; l < LayerCount; l++)
        {
            string p = $"model.layers.{l}.";
            Dense(p + "input_layernorm.weight", 0.1, Hidden);
            Dense(p + "post_attention_layernorm.weight", 0.1, Hidden);
            Linear(p + "self_attn.q_proj.weight", Heads * HeadDim, Hidden);
            Linear(p + "self_attn.k_proj.weight", KvHeads * HeadDim, Hidden);
            Linear(p + "self_attn.v_proj.weight", KvHeads * HeadDim, Hidden);
            if (qwen)
            {
                Dense(p + "self_attn.q_proj.bias", 0.3, Heads * HeadDim);
                Dense(p + "self_attn.k_proj.bias", 0.3, KvHeads * HeadDim);
                Dense(p + "self_attn.v_proj.bias", 0.3, KvHeads * HeadDim);
            }

            Linear(p + "self_attn.o_proj.weight", Hidden, Heads * HeadDim);
            Linear(p + "mlp.gate_proj.weight", Inter, Hidden);
            Linear(p + "mlp.up_proj.weight", Inter, Hidden);
            Linear(p + "mlp.down_proj.weight", Hidden, Inter);
        }

        SafeTensorsWriter.Save(Path.Combine(dir, "model.safetensors"), entries);
        return (dir, new Weights(dense, linear));
    }

    // ---- float64 reference, written plainly ----
    private static double[][] MatMul(double[][] x, (float[] W, int Out, int In) w) =>
        [.. x.Select(row => Enumerable.Range(0, w.Out).Select(o => Enumerable.Range(0, w.In).Sum(i => row[i] * w.W[(o * w.In) + i])).ToArray())];

    private static double[][] RmsNorm(double[][] x, float[] weight) =>
        [.. x.Select(row => { double inv = 1 / Math.Sqrt((row.Sum(v => v * v) / row.Length) + 1e-5); return row.Select((v, j) => weight[j] * v * inv).ToArray(); })];

    private static void Rope(double[][] x, int heads, float[] invFreq)
    {
        for (int t = 0; t < x.Length; t++)
        {
            for (int h = 0; h < heads; h++)
            {
                for (int i = 0; i < HeadDim / 2; i++)
                {
                    double angle = t * (double)invFreq[i];
                    int a = (h * HeadDim) + i, b = a + (HeadDim / 2);
                    (x[t][a], x[t][b]) = ((x[t][a] * Math.Cos(angle)) - (x[t][b] * Math.Sin(angle)), (x[t][b] * Math.Cos(angle)) + (x[t][a] * Math.Sin(angle)));
                }
            }
        }
    }

    private static double[] Reference(Weights w, int[] ids, int window = 0)
    {
        int t = ids.Length;
        double[][] x = [.. ids.Select(id => Enumerable.Range(0, Hidden).Select(j => (double)w.Dense["model.embed_tokens.weight"][(id * Hidden) + j]).ToArray())];
        float[] invFreq = RopeFrequencies.Compute(new RopeParameters(RopeType.Default, 10000), HeadDim);
        for (int l = 0; l < LayerCount; l++)
        {
            string p = $"model.layers.{l}.";
            double[][] h = RmsNorm(x, w.Dense[p + "input_layernorm.weight"]);
            double[][] q = MatMul(h, w.Linear[p + "self_attn.q_proj.weight"]), k = MatMul(h, w.Linear[p + "self_attn.k_proj.weight"]), v = MatMul(h, w.Linear[p + "self_attn.v_proj.weight"]);
            foreach ((double[][] m, string bias) in new[] { (q, "q_proj"), (k, "k_proj"), (v, "v_proj") })
            {
                if (w.Dense.TryGetValue(p + $"self_attn.{bias}.bias", out float[]? b))
                {
                    foreach (double[] row in m)
                    {
                        for (int j = 0; j < row.Length; j++)
                        {
                            row[j] += b[j];
                        }
                    }
                }
            }

            Rope(q, Heads, invFreq);
            Rope(k, KvHeads, invFreq);
            var attention = new double[t][];
            for (int i = 0; i < t; i++)
            {
                attention[i] = new double[Heads * HeadDim];
                for (int hd = 0; hd < Heads; hd++)
                {
                    int kv = hd / (Heads / KvHeads);
                    int first = window > 0 ? Math.Max(0, i - window + 1) : 0;
                    double[] scores = [.. Enumerable.Range(first, i + 1 - first).Select(j => Enumerable.Range(0, HeadDim).Sum(e => q[i][(hd * HeadDim) + e] * k[j][(kv * HeadDim) + e]) / Math.Sqrt(HeadDim))];
                    double max = scores.Max();
                    double[] pr = [.. scores.Select(s => Math.Exp(s - max))];
                    double sum = pr.Sum();
                    for (int j = first; j <= i; j++)
                    {
                        for (int e = 0; e < HeadDim; e++)
                        {
                            attention[i][(hd * HeadDim) + e] += pr[j - first] / sum * v[j][(kv * HeadDim) + e];
                        }
                    }
                }
            }

            double[][] o = MatMul(attention, w.Linear[p + "self_attn.o_proj.weight"]);
            x = [.. x.Select((row, i) => row.Select((val, j) => val + o[i][j]).ToArray())];
            double[][] h2 = RmsNorm(x, w.Dense[p + "post_attention_layernorm.weight"]);
            double[][] g = MatMul(h2, w.Linear[p + "mlp.gate_proj.weight"]), u = MatMul(h2, w.Linear[p + "mlp.up_proj.weight"]);
            double[][] act = [.. g.Select((row, i) => row.Select((gv, j) => gv / (1 + Math.Exp(-gv)) * u[i][j]).ToArray())];
            double[][] d = MatMul(act, w.Linear[p + "mlp.down_proj.weight"]);
            x = [.. x.Select((row, i) => row.Select((val, j) => val + d[i][j]).ToArray())];
        }

        double[][] final = RmsNorm(x, w.Dense["model.norm.weight"]);
        return [.. MatMul(final, (w.Dense["lm_head.weight"], Vocab, Hidden)).SelectMany(r => r)];
    }

    [Fact]
    public void LogitsMatchAFloat64Forward()
    {
        (string folder, Weights weights) = WriteCheckpoint();
        using LlamaForCausalLM model = LlamaForCausalLM.LoadModel(fixture.Device, folder);
        int[] ids = [3, 17, 42, 0, 9, 9, 31];
        float[] logits = model.Forward(ids);
        double[] expected = Reference(weights, ids);
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
        (string folder, Weights weights) = WriteCheckpoint();
        DType before = fixture.Device.ComputeDtype;
        fixture.Device.ComputeDtype = dtype;
        try
        {
            using LlamaForCausalLM model = LlamaForCausalLM.LoadModel(fixture.Device, folder);
            Assert.Equal(dtype, model.Embed.Table.Dtype);
            int[] ids = [3, 17, 42, 0, 9, 9, 31];
            float[] logits = model.Forward(ids);
            double[] expected = Reference(weights, ids);
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
        (string folder, Weights weights) = WriteCheckpoint(qwen: true);
        using (LlamaForCausalLM model = LlamaForCausalLM.LoadModel(fixture.Device, folder))
        {
            int[] ids = [7, 2, 49, 11];
            float[] logits = model.Forward(ids);
            double[] expected = Reference(weights, ids);
            double scale = expected.Max(Math.Abs);
            Assert.All(logits.Zip(expected), p => Assert.True(Math.Abs(p.First - p.Second) <= 1e-4 * scale, $"{p.First} vs {p.Second}"));
        }

        (string noBias, _) = WriteCheckpoint(qwen: false);
        File.WriteAllText(Path.Combine(noBias, "config.json"), File.ReadAllText(Path.Combine(noBias, "config.json")).Replace("\"llama\"", "\"qwen2\"", StringComparison.Ordinal));
        var e = Assert.Throws<CheckpointFormatException>(() => LlamaForCausalLM.LoadModel(fixture.Device, noBias));
        Assert.Equal("model.layers.0.self_attn.q_proj.bias", e.ItemName);
    }

    [Fact]
    public void LoraFromTheRunConfigAndFromASavedPeftAdapter()
    {
        (string folder, Weights weights) = WriteCheckpoint();
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
        double[] expected = Reference(weights, ids);
        double scale = expected.Max(Math.Abs);
        Assert.All(adaptedLogits.Zip(expected), p => Assert.True(Math.Abs(p.First - p.Second) <= 1e-4 * scale, $"{p.First} vs {p.Second}"));
        Assert.NotEqual(baseLogits, adaptedLogits);
    }

    [Fact]
    public void MistralSlidingWindowMatchesFloat64()
    {
        (string folder, Weights weights) = WriteCheckpoint(slidingWindow: 3);
        using LlamaForCausalLM model = LlamaForCausalLM.LoadModel(fixture.Device, folder);
        int[] ids = [4, 8, 15, 16, 23, 42, 7];
        float[] logits = model.Forward(ids);
        double[] expected = Reference(weights, ids, window: 3);
        double scale = expected.Max(Math.Abs);
        Assert.All(logits.Zip(expected), p => Assert.True(Math.Abs(p.First - p.Second) <= 1e-4 * scale, $"{p.First} vs {p.Second}"));
        double[] unwindowed = Reference(weights, ids);
        Assert.True(logits.Zip(unwindowed).Any(p => Math.Abs(p.First - p.Second) > 1e-3 * scale), "the window must change late tokens' logits");
    }

    [Fact]
    public void TiedEmbeddingsStandInForAnAbsentLmHead()
    {
        (string folder, Weights weights) = WriteCheckpoint(tied: true);
        using LlamaForCausalLM model = LlamaForCausalLM.LoadModel(fixture.Device, folder);
        int[] ids = [5, 1, 44];
        float[] logits = model.Forward(ids);
        double[] expected = Reference(weights, ids);
        double scale = expected.Max(Math.Abs);
        Assert.All(logits.Zip(expected), p => Assert.True(Math.Abs(p.First - p.Second) <= 1e-4 * scale, $"{p.First} vs {p.Second}"));
    }

    [Fact]
    public void AWrongShapeNamesTheTensorAndBothShapes()
    {
        (string folder, _) = WriteCheckpoint();
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
