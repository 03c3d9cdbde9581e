using System.Runtime.InteropServices;
using QLoRA.Core;
using QLoRA.Core.HuggingFace;
using QLoRA.Core.Numerics;
using QLoRA.Core.Quantization;
using QLoRA.Core.SafeTensors;
using QLoRA.Runtime.Ops;

namespace QLoRA.Runtime.Tests;

/// <summary>
/// A tiny Llama checkpoint (bf16 weights; projections quantized to NF4 on load, so the reference uses the dequantized
/// values) and its float64 forward written plainly, with optional LoRA adapters and a packed-batch loss.
/// </summary>
public static class TinyLlama
{
    public const int Hidden = 64, Inter = 96, LayerCount = 2, Heads = 4, KvHeads = 2, HeadDim = 16, Vocab = 50;

    public static float[] Bf16Values(int count, int seed, double scale)
    {
        var rng = new Random(seed);
        return [.. Enumerable.Range(0, count).Select(_ => BFloat16.FromSingle((float)(((rng.NextDouble() * 2) - 1) * scale)).ToSingle())];
    }

    public static byte[] AsBf16(float[] values) => MemoryMarshal.AsBytes(values.Select(BFloat16.FromSingle).ToArray().AsSpan()).ToArray();

    /// <summary>Dense tensors, the projections as the model sees them quantized on load, and the projections as stored (bf16).</summary>
    public sealed record Weights(Dictionary<string, float[]> Dense, Dictionary<string, (float[] W, int Out, int In)> Linear, Dictionary<string, (float[] W, int Out, int In)> Stored)
    {
        /// <summary>The model loaded with its projections kept dense: the stored weights.</summary>
        public Weights AsLoadedDense() => this with { Linear = new(Stored) };
    }

    /// <param name="attentionBias">llama's attention_bias: q, k, v and o_proj get biases.</param>
    public static (string Folder, Weights W) WriteCheckpoint(bool tied = false, bool qwen = false, int slidingWindow = 0, bool attentionBias = false)
    {
        string dir = Directory.CreateTempSubdirectory("qlora-llama-").FullName;
        string modelType = qwen ? "qwen2" : slidingWindow > 0 ? "mistral" : "llama";
        string window = (slidingWindow > 0 ? $",\"sliding_window\":{slidingWindow}" : "") + (tied ? ",\"tie_word_embeddings\":true" : "") + (attentionBias ? ",\"attention_bias\":true" : "");
        File.WriteAllText(Path.Combine(dir, "config.json"), $$"""
            {"model_type":"{{modelType}}","hidden_size":{{Hidden}},"intermediate_size":{{Inter}},"num_hidden_layers":{{LayerCount}},"num_attention_heads":{{Heads}},
             "num_key_value_heads":{{KvHeads}},"vocab_size":{{Vocab}},"rms_norm_eps":1e-5,"rope_theta":10000.0,"max_position_embeddings":128,"torch_dtype":"bfloat16"{{window}}}
            """);
        var dense = new Dictionary<string, float[]>();
        var linear = new Dictionary<string, (float[], int, int)>();
        var stored = new Dictionary<string, (float[], int, int)>();
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
            stored[name] = (v, outFeatures, inFeatures);
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
            if (qwen || attentionBias)
            {
                Dense(p + "self_attn.q_proj.bias", 0.3, Heads * HeadDim);
                Dense(p + "self_attn.k_proj.bias", 0.3, KvHeads * HeadDim);
                Dense(p + "self_attn.v_proj.bias", 0.3, KvHeads * HeadDim);
            }

            Linear(p + "self_attn.o_proj.weight", Hidden, Heads * HeadDim);
            if (attentionBias)
            {
                Dense(p + "self_attn.o_proj.bias", 0.3, Hidden);
            }

            Linear(p + "mlp.gate_proj.weight", Inter, Hidden);
            Linear(p + "mlp.up_proj.weight", Inter, Hidden);
            Linear(p + "mlp.down_proj.weight", Hidden, Inter);
        }

        SafeTensorsWriter.Save(Path.Combine(dir, "model.safetensors"), entries);
        return (dir, new Weights(dense, linear, stored));
    }

    // ---- float64 reference, written plainly ----
    public static double[][] MatMul(double[][] x, (float[] W, int Out, int In) w) =>
        [.. x.Select(row => Enumerable.Range(0, w.Out).Select(o => Enumerable.Range(0, w.In).Sum(i => row[i] * w.W[(o * w.In) + i])).ToArray())];

    public static double[][] RmsNorm(double[][] x, float[] weight) =>
        [.. x.Select(row => { double inv = 1 / Math.Sqrt((row.Sum(v => v * v) / row.Length) + 1e-5); return row.Select((v, j) => weight[j] * v * inv).ToArray(); })];

    public static void Rope(double[][] x, int heads, float[] invFreq)
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

    /// <summary>A LoRA adapter in the reference: A [r, in], B [out, r] row-major, y += s·(x Aᵀ) Bᵀ.</summary>
    public sealed record LoraRef(double[] A, double[] B, int Rank, double Scale);

    private static double[][] Project(double[][] x, Weights w, string module, IReadOnlyDictionary<string, LoraRef>? lora)
    {
        (float[] W, int Out, int In) linear = w.Linear[module + ".weight"];
        double[][] y = MatMul(x, linear);
        if (w.Dense.TryGetValue(module + ".bias", out float[]? bias))
        {
            foreach (double[] row in y)
            {
                for (int o = 0; o < row.Length; o++)
                {
                    row[o] += bias[o];
                }
            }
        }

        if (lora is not null && lora.TryGetValue(module, out LoraRef? adapter))
        {
            foreach ((double[] row, int t) in x.Select((r, t) => (r, t)))
            {
                double[] xa = [.. Enumerable.Range(0, adapter.Rank).Select(r => Enumerable.Range(0, linear.In).Sum(i => row[i] * adapter.A[(r * linear.In) + i]))];
                for (int o = 0; o < linear.Out; o++)
                {
                    y[t][o] += adapter.Scale * Enumerable.Range(0, adapter.Rank).Sum(r => xa[r] * adapter.B[(o * adapter.Rank) + r]);
                }
            }
        }

        return y;
    }

    /// <summary>Mean next-token loss of a packed batch: each sequence through <see cref="Reference"/> on its own, targets as the batch's labels.</summary>
    public static double Loss(Weights w, int[] ids, int[] labels, int[] boundaries, IReadOnlyDictionary<string, LoraRef>? lora = null, int window = 0)
    {
        double sum = 0;
        int counted = 0;
        for (int s = 0; s + 1 < boundaries.Length; s++)
        {
            int start = boundaries[s], length = boundaries[s + 1] - start;
            double[] logits = Reference(w, ids[start..(start + length)], window, lora);
            for (int t = 0; t < length; t++)
            {
                int label = labels[start + t];
                if (label == -100)
                {
                    continue;
                }

                double[] row = logits[(t * Vocab)..((t + 1) * Vocab)];
                double max = row.Max();
                double logSum = max + Math.Log(row.Sum(z => Math.Exp(z - max)));
                sum += logSum - row[label];
                counted++;
            }
        }

        return sum / counted;
    }

    public static double[] Reference(Weights w, int[] ids, int window = 0, IReadOnlyDictionary<string, LoraRef>? lora = null)
    {
        int t = ids.Length;
        double[][] x = [.. ids.Select(id => Enumerable.Range(0, Hidden).Select(j => (double)w.Dense["model.embed_tokens.weight"][(id * Hidden) + j]).ToArray())];
        float[] invFreq = RopeFrequencies.Compute(new RopeParameters(RopeType.Default, 10000), HeadDim);
        for (int l = 0; l < LayerCount; l++)
        {
            string p = $"model.layers.{l}.";
            double[][] h = RmsNorm(x, w.Dense[p + "input_layernorm.weight"]);
            double[][] q = Project(h, w, p + "self_attn.q_proj", lora), k = Project(h, w, p + "self_attn.k_proj", lora), v = Project(h, w, p + "self_attn.v_proj", lora);

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

            double[][] o = Project(attention, w, p + "self_attn.o_proj", lora);
            x = [.. x.Select((row, i) => row.Select((val, j) => val + o[i][j]).ToArray())];
            double[][] h2 = RmsNorm(x, w.Dense[p + "post_attention_layernorm.weight"]);
            double[][] g = Project(h2, w, p + "mlp.gate_proj", lora), u = Project(h2, w, p + "mlp.up_proj", lora);
            double[][] act = [.. g.Select((row, i) => row.Select((gv, j) => gv / (1 + Math.Exp(-gv)) * u[i][j]).ToArray())];
            double[][] d = Project(act, w, p + "mlp.down_proj", lora);
            x = [.. x.Select((row, i) => row.Select((val, j) => val + d[i][j]).ToArray())];
        }

        double[][] final = RmsNorm(x, w.Dense["model.norm.weight"]);
        return [.. MatMul(final, (w.Dense["lm_head.weight"], Vocab, Hidden)).SelectMany(r => r)];
    }

}
