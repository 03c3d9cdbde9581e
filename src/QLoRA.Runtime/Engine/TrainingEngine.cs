using QLoRA.Core;
using QLoRA.Runtime.Ops;
using QLoRA.Runtime.Tensors;
using Device = QLoRA.Runtime.Devices.Device;

namespace QLoRA.Runtime.Engine;

/// <summary>How a training engine is planned.</summary>
/// <param name="MaxTokens">Most tokens of one packed micro-batch: fixes the activation arena.</param>
/// <param name="GradientCheckpointing">Keep only each block's input and re-run its forward inside the backward.</param>
/// <param name="MaxMicroBatches">Most micro-batches accumulated into one optimizer step (sizes the step's loss record).</param>
/// <param name="ModulesToSave">PEFT's modules_to_save: modules trained whole besides the adapters, matched as PEFT
/// matches them (a module name ending with an entry): "embed_tokens", "lm_head", "norm" (every norm),
/// "input_layernorm", "post_attention_layernorm".</param>
public sealed record EngineOptions(int MaxTokens, bool GradientCheckpointing = true, int MaxMicroBatches = 16, IReadOnlyList<string>? ModulesToSave = null);

/// <summary>What one optimizer step measured, read from the device once.</summary>
/// <param name="Loss">Mean loss over every target token of the step's micro-batches.</param>
/// <param name="TargetTokens">Target tokens of the step.</param>
/// <param name="GradientNorm">Global L2 norm of the adapters' gradients (before clipping).</param>
/// <param name="Finite">Loss and gradients are all finite.</param>
public sealed record StepStatistics(double Loss, int TargetTokens, double GradientNorm, bool Finite);

/// <summary>
/// Trains LoRA adapters on a frozen base, top to bottom: an activation arena planned once for the token budget, the
/// adapters in flat buffers, and per micro-batch embed → blocks (saving what each backward needs, or only each block's
/// input with gradient checkpointing) → final norm → the fused lm_head + loss (kept on the device) → the blocks'
/// backward from the top. The host reads one record per optimizer step (the loss and the gradient norm's partials).
/// </summary>
public sealed class TrainingEngine : IDisposable
{
    private readonly Device _device;
    private readonly EngineModel _model;
    private readonly EngineShape _shape;
    private readonly ActivationArena _arena;
    private readonly ActivationArena.Slot[] _residual; // block inputs; [Layers] is the last block's output
    private readonly BlockActivations[] _saved;        // one per block, or one shared with checkpointing
    private readonly BlockScratch _scratch;
    private readonly ActivationArena.Slot _finalNormed, _finalInverseRms, _dFinalNormed, _positions, _labels;
    private readonly DeviceTensor _stepLosses, _normPartials, _inverseFrequencies;
    private readonly DeviceTensor? _embedGradient, _lmHeadGradient, _finalNormGradient;
    private readonly (DeviceTensor? Input, DeviceTensor? Post)[] _normGradients;
    private int _microBatches;
    private int _targetTokens;

    /// <summary>Plans and allocates the engine for <paramref name="model"/>, whose adapters must be attached.</summary>
    /// <exception cref="ArgumentException">No adapter is attached, or the options are out of range.</exception>
    public TrainingEngine(Device device, EngineModel model, EngineOptions options)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(options.MaxTokens, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(options.MaxMicroBatches, 1);
        _device = device;
        _model = model;
        Options = options;
        DType compute = model.Embed.Table.Dtype;
        _shape = EngineShape.Of(model.Config, options.MaxTokens, compute);
        Layout = Plan(_shape, options.GradientCheckpointing, out _residual, out _saved, out _scratch, out _finalNormed, out _finalInverseRms, out _dFinalNormed, out _positions, out _labels);
        Parameters = LoraParameters.Flatten(device, model.Projections(), compute, WholeModules(model, options.ModulesToSave ?? []));
        _embedGradient = Parameters.GradientOf("model.embed_tokens");
        _lmHeadGradient = Parameters.GradientOf("lm_head");
        _finalNormGradient = Parameters.GradientOf("model.norm");
        _normGradients = [.. Enumerable.Range(0, model.Blocks.Count).Select(l =>
            (Parameters.GradientOf($"model.layers.{l}.input_layernorm"), Parameters.GradientOf($"model.layers.{l}.post_attention_layernorm")))];
        try
        {
            _arena = ActivationArena.Allocate(device, Layout);
            _stepLosses = DeviceTensor.Allocate(device, DType.F32, options.MaxMicroBatches, options.MaxTokens);
            _normPartials = DeviceTensor.Allocate(device, DType.F32, SumOfSquares.Lanes);
            _inverseFrequencies = DeviceTensor.FromHost<float>(device, RopeFrequencies.Compute(model.Config.Rope, model.Config.HeadDim), DType.F32, model.Config.HeadDim / 2);
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    /// <summary>The options the engine was planned with.</summary>
    public EngineOptions Options { get; }

    /// <summary>The arena's layout (its <see cref="ActivationArena.Layout.Bytes"/> is the activation memory).</summary>
    public ActivationArena.Layout Layout { get; }

    /// <summary>The adapters' flat buffers.</summary>
    public LoraParameters Parameters { get; }

    /// <summary>The model's modules that <paramref name="modulesToSave"/> selects, with their tensors.</summary>
    /// <exception cref="NotSupportedException">lm_head or embed_tokens is selected while lm_head is tied to the embeddings.</exception>
    /// <exception cref="ArgumentException">An entry matches no module of the model.</exception>
    public static IReadOnlyList<(string Module, DeviceTensor Tensor)> WholeModules(EngineModel model, IReadOnlyList<string> modulesToSave)
    {
        if (model.TiedLmHead && modulesToSave.Any(m => "lm_head".EndsWith(m, StringComparison.Ordinal) || "model.embed_tokens".EndsWith(m, StringComparison.Ordinal)))
        {
            throw new NotSupportedException("modules_to_save names lm_head or embed_tokens, but lm_head is tied to the embeddings (tie_word_embeddings): training a tied table whole is not supported; train the adapters and norms, or untie the checkpoint.");
        }

        var selected = model.WholeModules().Where(m => QLoRA.Core.Peft.LoraConfig.MatchesModulesToSave(modulesToSave, m.Name)).ToList();
        foreach (string entry in modulesToSave)
        {
            if (!model.WholeModules().Any(m => m.Name.EndsWith(entry, StringComparison.Ordinal)))
            {
                throw new ArgumentException($"modules_to_save entry '{entry}' matches no module of the model (embed_tokens, the norms, lm_head).", nameof(modulesToSave));
            }
        }

        return selected;
    }

    /// <summary>Activation bytes a run of <paramref name="model"/> needs for these options, without allocating anything.</summary>
    public static long ActivationBytes(EngineModel model, EngineOptions options) =>
        Plan(EngineShape.Of(model.Config, options.MaxTokens, model.Embed.Table.Dtype), options.GradientCheckpointing, out _, out _, out _, out _, out _, out _, out _, out _).Bytes;

    private static ActivationArena.Layout Plan(EngineShape s, bool checkpointing, out ActivationArena.Slot[] residual, out BlockActivations[] saved, out BlockScratch scratch,
        out ActivationArena.Slot finalNormed, out ActivationArena.Slot finalInverseRms, out ActivationArena.Slot dFinalNormed, out ActivationArena.Slot positions, out ActivationArena.Slot labels)
    {
        var layout = new ActivationArena.Layout();
        residual = [.. Enumerable.Range(0, s.Layers + 1).Select(_ => layout.Add(s.ComputeDtype, s.Tokens, s.Hidden))];
        saved = [.. Enumerable.Range(0, checkpointing ? 1 : s.Layers).Select(_ => new BlockActivations(layout, s))];
        scratch = new BlockScratch(layout, s);
        finalNormed = layout.Add(s.ComputeDtype, s.Tokens, s.Hidden);
        finalInverseRms = layout.Add(DType.F32, s.Tokens);
        dFinalNormed = layout.Add(s.ComputeDtype, s.Tokens, s.Hidden);
        positions = layout.Add(DType.I32, s.Tokens);
        labels = layout.Add(DType.I32, s.Tokens);
        return layout;
    }

    /// <summary>Starts an optimizer step: clears the adapters' gradients and the step's loss record.</summary>
    public void BeginStep()
    {
        Parameters.ZeroGradients();
        _stepLosses.Clear();
        _microBatches = 0;
        _targetTokens = 0;
    }

    /// <summary>
    /// Forward and backward of one micro-batch, accumulating the adapters' gradients of the loss summed over its target
    /// tokens times <paramref name="lossScale"/> (1 / the step's target tokens, so accumulated micro-batches give the
    /// mean over all of them). No host synchronization.
    /// </summary>
    /// <param name="batch">The micro-batch (at most <see cref="EngineOptions.MaxTokens"/> tokens).</param>
    /// <param name="lossScale">Weight of each target token's loss.</param>
    /// <param name="dropoutSeed">Seed of this micro-batch's LoRA dropout masks (the backward reuses them).</param>
    /// <exception cref="ArgumentException">The batch is too large or an id or label is outside the vocabulary.</exception>
    /// <exception cref="InvalidOperationException">More micro-batches than the step's record holds.</exception>
    public void Accumulate(PackedBatch batch, float lossScale, uint dropoutSeed = 0)
    {
        BatchContext b = Prepare(batch, training: true);
        if (_microBatches >= Options.MaxMicroBatches)
        {
            throw new InvalidOperationException($"A step holds at most {Options.MaxMicroBatches} micro-batches (EngineOptions.MaxMicroBatches).");
        }

        SetDropoutSeeds(dropoutSeed);
        int t = b.Tokens, layers = _model.Blocks.Count;
        Forward(batch, b);
        DeviceTensor final = Rows(_residual[layers], t), normed = Rows(_finalNormed, t), inverseRms = Rows(_finalInverseRms, t), dNormed = Rows(_dFinalNormed, t);
        CrossEntropy.Accumulate(normed, _model.LmHead, Rows(_labels, t), _stepLosses.Rows(_microBatches, 1).Reshape(Options.MaxTokens).Slice(0, DType.F32, t), lossScale, dNormed, _lmHeadGradient);
        _model.Norm.Backward(final, dNormed, inverseRms, Rows(_scratch.DResidual, t), _finalNormGradient);
        for (int l = layers - 1; l >= 0; l--)
        {
            BlockActivations saved = SavedOf(l);
            if (Options.GradientCheckpointing)
            {
                // Re-run the block's forward from its kept input; its output is not needed again.
                DecoderBlock.Forward(_model.Blocks[l], _shape, b, saved, _scratch, Rows(_residual[l], t), Rows(_scratch.Projected, t));
            }

            DecoderBlock.Backward(_model.Blocks[l], _shape, b, saved, _scratch, Rows(_residual[l], t), _normGradients[l].Input, _normGradients[l].Post);
        }

        if (_embedGradient is not null)
        {
            _model.Embed.Backward(batch.Ids, Rows(_scratch.DResidual, t), _embedGradient); // dL/d(embedding rows), summed per id
        }

        _microBatches++;
        _targetTokens += batch.TargetTokens;
    }

    /// <summary>Reads the step's record: the loss (mean over the step's target tokens, given the scale used) and the gradient norm.</summary>
    /// <param name="lossScale">The scale every micro-batch of the step was accumulated with.</param>
    public StepStatistics ReadStep(float lossScale)
    {
        SumOfSquares.Partials(Parameters.Gradients, _normPartials);
        float[] losses = _stepLosses.Rows(0, Math.Max(1, _microBatches)).ToHost<float>();
        float[] partials = _normPartials.ToHost<float>();
        double sum = 0;
        foreach (float l in losses)
        {
            sum += l;
        }

        double loss = sum * lossScale;
        double norm = Math.Sqrt(SumOfSquares.Total(partials));
        return new StepStatistics(loss, _targetTokens, norm, double.IsFinite(loss) && double.IsFinite(norm));
    }

    /// <summary>Mean loss of a batch with the adapters as they are (no dropout, no gradients).</summary>
    /// <exception cref="ArgumentException">The batch is too large or an id or label is outside the vocabulary.</exception>
    public double EvaluateLoss(PackedBatch batch)
    {
        BatchContext b = Prepare(batch, training: false);
        int t = b.Tokens;
        Forward(batch, b);
        DeviceTensor losses = _stepLosses.Rows(Options.MaxMicroBatches - 1, 1).Reshape(Options.MaxTokens).Slice(0, DType.F32, t);
        float scale = batch.TargetTokens == 0 ? 0f : 1f / batch.TargetTokens;
        CrossEntropy.Accumulate(Rows(_finalNormed, t), _model.LmHead, Rows(_labels, t), losses, scale, null, null);
        return losses.ToHost<float>().Sum(l => (double)l) * scale;
    }

    private void Forward(PackedBatch batch, BatchContext b)
    {
        int t = b.Tokens, layers = _model.Blocks.Count;
        _model.Embed.Forward(batch.Ids, Rows(_residual[0], t));
        for (int l = 0; l < layers; l++)
        {
            DecoderBlock.Forward(_model.Blocks[l], _shape, b, SavedOf(l), _scratch, Rows(_residual[l], t), Rows(_residual[l + 1], t));
        }

        _model.Norm.Forward(Rows(_residual[layers], t), Rows(_finalNormed, t), Rows(_finalInverseRms, t));
    }

    private BatchContext Prepare(PackedBatch batch, bool training)
    {
        int t = batch.Tokens, vocab = _shape.Vocab;
        if (t > Options.MaxTokens)
        {
            throw new ArgumentException($"The batch has {t} tokens; the engine was planned for at most {Options.MaxTokens} (EngineOptions.MaxTokens).", nameof(batch));
        }

        for (int i = 0; i < t; i++)
        {
            if ((uint)batch.Ids[i] >= (uint)vocab)
            {
                throw new ArgumentException($"Token {i} has id {batch.Ids[i]}, outside the vocabulary of {vocab}.", nameof(batch));
            }

            if (batch.Labels[i] != PackedBatch.IgnoreIndex && (uint)batch.Labels[i] >= (uint)vocab)
            {
                throw new ArgumentException($"The target of token {i} is {batch.Labels[i]}, outside the vocabulary of {vocab} (and not {PackedBatch.IgnoreIndex}).", nameof(batch));
            }
        }

        DeviceTensor positions = Rows(_positions, t);
        positions.CopyFromHost<int>(batch.Positions());
        Rows(_labels, t).CopyFromHost<int>(batch.Labels);
        return new BatchContext(t, batch.Boundaries, positions, _inverseFrequencies, _model.Config.SlidingWindow ?? 0, training);
    }

    private void SetDropoutSeeds(uint seed)
    {
        uint module = 0;
        foreach (LoraParameters.Entry entry in Parameters.Entries)
        {
            // Distinct per module and micro-batch; the same in a checkpointed block's re-run forward.
            entry.Layer.Lora!.DropoutSeed = unchecked((seed * 0x9E3779B9u) ^ (++module * 0x85EBCA6Bu));
        }
    }

    private BlockActivations SavedOf(int layer) => _saved[Options.GradientCheckpointing ? 0 : layer];

    private static DeviceTensor Rows(ActivationArena.Slot slot, int tokens) => slot.Tensor.Rows(0, tokens);

    /// <summary>Frees the arena and the adapters' flat buffers (detaching the adapters from the model).</summary>
    public void Dispose()
    {
        _arena?.Dispose();
        _stepLosses?.Dispose();
        _normPartials?.Dispose();
        _inverseFrequencies?.Dispose();
        Parameters.Dispose();
    }
}
