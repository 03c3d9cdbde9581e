using QLoRA.Core;
using QLoRA.Core.Peft;
using QLoRA.Runtime.Engine;
using QLoRA.Runtime.Layers;

namespace QLoRA.Runtime.Training;

/// <summary>
/// Device memory a training run needs, computed from shapes before anything of the run is allocated: the frozen
/// weights, the adapters' flat buffers (values, gradients, compute-dtype copy), the optimizer's device state, the
/// activation arena at the planned token budget and checkpointing, and the fused loss's logit chunk.
/// </summary>
/// <param name="WeightsBytes">Base weights on the device (4-bit codes and absmax, dense norms, embeddings, lm_head).</param>
/// <param name="AdapterBytes">Adapter values, gradients and their compute-dtype copy.</param>
/// <param name="OptimizerBytes">Optimizer state held on the device (a page for paged optimizers).</param>
/// <param name="ActivationBytes">The activation arena.</param>
/// <param name="LossBytes">Logits of one loss chunk and the step's loss record.</param>
public sealed record MemoryEstimate(long WeightsBytes, long AdapterBytes, long OptimizerBytes, long ActivationBytes, long LossBytes)
{
    /// <summary>All of it.</summary>
    public long TotalBytes => WeightsBytes + AdapterBytes + OptimizerBytes + ActivationBytes + LossBytes;

    /// <summary>
    /// The estimate for <paramref name="model"/> with the adapters <paramref name="lora"/> would attach, planned with
    /// <paramref name="engine"/> and <paramref name="options"/> — from shapes alone, allocating nothing.
    /// </summary>
    public static MemoryEstimate For(EngineModel model, LoraConfig lora, EngineOptions engine, TrainerOptions options)
    {
        var targeted = model.Projections().Where(p => lora.Targets(p.Name)).ToDictionary(p => p.Layer, p => lora.RankOf(p.Name));
        DType compute = model.Embed.Table.Dtype;
        long weights = model.Embed.Table.ByteLength + model.Norm.Weight.ByteLength
            + (ReferenceEquals(model.LmHead, model.Embed.Table) ? 0 : model.LmHead.ByteLength);
        long adapterElements = 0;
        foreach (DecoderBlockWeights block in model.Blocks)
        {
            weights += block.InputNorm.Weight.ByteLength + block.PostNorm.Weight.ByteLength;
            foreach (QuantizedLinear projection in block.Projections)
            {
                weights += projection.WeightBytes + (projection.Bias?.ByteLength ?? 0);
                if (targeted.TryGetValue(projection, out int rank))
                {
                    adapterElements += LoraParameters.Align((long)rank * projection.InFeatures) + LoraParameters.Align((long)projection.OutFeatures * rank);
                }
            }
        }

        long adapters = adapterElements * (4 + 4 + (compute == DType.F32 ? 0 : compute.SizeInBytes()));
        // Modules trained whole (modules_to_save): float32 master and gradient each; the optimizer's state covers them too.
        long whole = TrainingEngine.WholeModules(model, engine.ModulesToSave ?? lora.ModulesToSave).Sum(m => LoraParameters.Align(m.Tensor.ElementCount));
        adapters += whole * 8;
        adapterElements += whole;
        const int Page = PagedAdamWOptimizer.DefaultPageElements;
        long optimizer = options.Optimizer switch
        {
            OptimizerKind.AdamW => 8 * adapterElements,
            OptimizerKind.PagedAdamW32Bit => 2 * 8L * Math.Min(Page, adapterElements),
            OptimizerKind.AdamW8Bit => (2 * adapterElements) + (8 * ((adapterElements + 255) / 256)),
            _ => 2 * ((2L * Math.Min(Page, adapterElements)) + (8 * ((Math.Min(Page, adapterElements) + 255) / 256))),
        };
        int chunk = Math.Min(1024, engine.MaxTokens);
        long loss = ((long)chunk * model.Config.VocabSize * (4 + (compute == DType.F32 ? 0 : compute.SizeInBytes()))) + (4L * engine.MaxMicroBatches * engine.MaxTokens);
        return new MemoryEstimate(weights, adapters, optimizer, TrainingEngine.ActivationBytes(model, engine), loss);
    }

    /// <summary>What to change when the estimate exceeds <paramref name="budget"/>, largest saving first.</summary>
    public string Advice(long budget)
    {
        var advice = new List<(long Saving, string Text)>
        {
            (ActivationBytes / 2, "lower the batch or sequence length (EngineOptions.MaxTokens) or turn gradient checkpointing on"),
            (OptimizerBytes, "use a paged optimizer (paged_adamw_32bit or paged_adamw_8bit)"),
            (AdapterBytes / 2, "lower the LoRA rank or target fewer modules"),
            (LossBytes / 2, "lower the tokens per micro-batch (the loss keeps one chunk of [tokens, vocab] logits)"),
        };
        return "To fit: " + string.Join("; ", advice.Where(a => a.Saving > 0).OrderByDescending(a => a.Saving).Select(a => a.Text)) + ".";
    }

    /// <inheritdoc />
    public override string ToString() =>
        $"weights {Mib(WeightsBytes)}, adapters {Mib(AdapterBytes)}, optimizer {Mib(OptimizerBytes)}, activations {Mib(ActivationBytes)}, loss {Mib(LossBytes)}";

    private static string Mib(long bytes) => $"{bytes / 1048576.0:F1} MiB";
}
