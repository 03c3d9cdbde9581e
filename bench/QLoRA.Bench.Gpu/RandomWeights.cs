using QLoRA.Core;
using QLoRA.Core.HuggingFace;
using QLoRA.Core.Quantization;
using QLoRA.Core.Weights;
using QLoRA.Modeling;
using QLoRA.Runtime.Engine;
using QLoRA.Runtime.Models;
using Device = QLoRA.Runtime.Devices.Device;

namespace QLoRA.Bench.Gpu;

/// <summary>
/// A Llama-shaped checkpoint that exists only in memory: projections as random NF4 + double-quantized tensors (codes
/// and absmax drawn directly, no quantization pass), embeddings, lm_head and norms as random dense values — enough to
/// load a model of any size for speed and memory measurements without writing gigabytes.
/// </summary>
internal sealed class RandomWeights(HfModelConfig config, int seed = 1) : IWeightSource
{
    public string Location => "random weights";

    /// <summary>
    /// Loads the built-in Llama from these weights and its engine form (LoadFrom keeps no config of its own, so the
    /// engine model is assembled here from <paramref name="config"/>).
    /// </summary>
    public static (LlamaForCausalLM Model, EngineModel Engine) Load(Device device, HfModelConfig config, RandomWeights source)
    {
        LlamaForCausalLM model = LlamaForCausalLM.LoadFrom(device, source, new ModelDimensions(config), "");
        var blocks = model.Layers.Select(l => new DecoderBlockWeights(l.InputLayernorm, l.QProj, l.KProj, l.VProj, l.OProj, l.PostAttentionLayernorm, l.GateProj, l.UpProj, l.DownProj));
        return (model, new EngineModel(config, model.Embed, [.. blocks], model.Norm, model.LmHead.Weight));
    }

    /// <summary>The value after <paramref name="name"/> on the command line, or <paramref name="fallback"/>.</summary>
    public static string Option(string[] args, string name, string fallback) => args.SkipWhile(a => a != name).Skip(1).FirstOrDefault() ?? fallback;

    public static HfModelConfig Config(string shape, bool small)
    {
        (int hidden, int inter, int layers, int heads, int kv, int vocab) = small
            ? (256, 704, 2, 4, 2, 1024)
            : shape == "8b" ? (4096, 14336, 32, 32, 8, 128256) : (2048, 8192, 16, 32, 8, 128256);
        string folder = Directory.CreateTempSubdirectory("qlora-random-").FullName;
        string path = Path.Combine(folder, "config.json");
        File.WriteAllText(path, $$"""
            {"model_type": "llama", "hidden_size": {{hidden}}, "intermediate_size": {{inter}}, "num_hidden_layers": {{layers}},
             "num_attention_heads": {{heads}}, "num_key_value_heads": {{kv}}, "vocab_size": {{vocab}}, "rms_norm_eps": 1e-5,
             "rope_theta": 500000.0, "max_position_embeddings": 8192, "torch_dtype": "bfloat16"}
            """);
        return HfModelConfig.Load(path);
    }

    public WeightInfo? Describe(string name)
    {
        if (name.EndsWith(".bias", StringComparison.Ordinal))
        {
            return null; // llama without attention_bias / mlp_bias: no projection has one
        }

        long[]? shape = LlamaTensorShapes.Expected(config, name, out _);
        if (shape is null)
        {
            return null;
        }

        bool projection = name.Contains("_proj.weight", StringComparison.Ordinal);
        return new WeightInfo(name, DType.BF16, shape, projection ? QuantType.Nf4 : null);
    }

    public QuantizedTensor ReadQuantized(string name)
    {
        long[] shape = LlamaTensorShapes.Expected(config, name, out _)!;
        long count = shape[0] * shape[1];
        var rng = new Random(HashCode.Combine(seed, name));
        var packed = new byte[count / 2];
        rng.NextBytes(packed);
        // Absmax of N(0, 0.02²) weights in blocks of 64 is about 0.05: draw around it, then double-quantize as QLoRA does.
        var absmax = new float[count / 64];
        for (int i = 0; i < absmax.Length; i++)
        {
            absmax[i] = (float)(0.04 + (0.02 * rng.NextDouble()));
        }

        var state = new QuantState(QuantType.Nf4, 64, shape, DType.BF16, DoubleQuantization.Compress(absmax));
        return new QuantizedTensor(packed, state);
    }

    public float[] ReadSingle(string name)
    {
        long[] shape = LlamaTensorShapes.Expected(config, name, out _)!;
        long count = shape.Aggregate(1L, (a, b) => a * b);
        var rng = new Random(HashCode.Combine(seed, name));
        var values = new float[count];
        bool norm = shape.Length == 1;
        for (long i = 0; i < count; i++)
        {
            values[i] = norm ? 1f : (float)((rng.NextDouble() - 0.5) * 0.04);
        }

        return values;
    }

    public void Dispose()
    {
    }
}
