using QLoRA.Core;
using QLoRA.Core.Peft;
using QLoRA.Runtime.Engine;
using QLoRA.Runtime.Layers;

namespace QLoRA.Runtime.Tests;

/// <summary>PEFT adapters with random A and B (B not zero: the delta must show) and their float64 references.</summary>
public static class RandomAdapters
{
    /// <summary>Rank <paramref name="rank"/>, alpha 8, on the projections whose names end in one of <paramref name="targets"/>.</summary>
    public static (LoraAdapter Adapter, Dictionary<string, TinyLlama.LoraRef> Reference) For(EngineModel model, int seed, string[] targets, int rank = 4)
    {
        const double alpha = 8;
        var rng = new Random(seed);
        var modules = new List<LoraModuleWeights>();
        var reference = new Dictionary<string, TinyLlama.LoraRef>();
        foreach ((string name, QuantizedLinear layer) in model.Projections().Where(p => targets.Any(t => p.Name.EndsWith(t, StringComparison.Ordinal))))
        {
            float[] a = [.. Enumerable.Range(0, rank * layer.InFeatures).Select(_ => (float)((rng.NextDouble() - 0.5) * 1.2))];
            float[] b = [.. Enumerable.Range(0, layer.OutFeatures * rank).Select(_ => (float)((rng.NextDouble() - 0.5) * 1.2))];
            modules.Add(new LoraModuleWeights(name, TensorData.FromSingle(a, rank, layer.InFeatures), TensorData.FromSingle(b, layer.OutFeatures, rank)));
            reference[name] = new TinyLlama.LoraRef([.. a.Select(v => (double)v)], [.. b.Select(v => (double)v)], rank, alpha / rank);
        }

        return (new LoraAdapter(new LoraConfig { R = rank, LoraAlpha = alpha, TargetModules = [.. targets] }, modules), reference);
    }
}
