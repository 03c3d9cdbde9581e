using System.Diagnostics;
using System.Text.Json.Nodes;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using QLoRA.Core;
using QLoRA.Core.Peft;
using QLoRA.Core.Weights;
using QLoRA.Runtime.Devices;
using QLoRA.Runtime.Engine;
using QLoRA.Runtime.Layers;

namespace QLoRA.Runtime.Training;

/// <summary>
/// Fine-tunes LoRA adapters on a frozen base: attaches fresh adapters by a PEFT <see cref="LoraConfig"/> (PEFT's
/// init), checks the run fits in device memory before allocating it, and runs optimizer steps — micro-batches
/// accumulated with the loss normalized by all of the step's target tokens, global-norm clipping, the learning-rate
/// schedule, NaN/Inf handling — with checkpoints that resume bit for bit and the adapter out in PEFT's format.
/// </summary>
public sealed partial class LoraTrainer : IDisposable
{
    private readonly Device _device;
    private readonly LearningRateSchedule _schedule;
    private readonly Stopwatch _clock = new();

    /// <summary>Plans the run: checks memory, attaches adapters (seeded by <see cref="TrainerOptions.Seed"/>), builds the engine and the optimizer.</summary>
    /// <exception cref="TrainingMemoryException">The run would not fit in the memory budget (nothing is allocated).</exception>
    /// <exception cref="ArgumentException">The config targets no module of the model.</exception>
    public LoraTrainer(Device device, EngineModel model, LoraConfig lora, TrainerOptions options, EngineOptions engine)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(options.GradientAccumulation, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(options.MaxSteps, 1);
        engine = engine with { MaxMicroBatches = Math.Max(engine.MaxMicroBatches, options.GradientAccumulation), ModulesToSave = engine.ModulesToSave ?? lora.ModulesToSave };
        Estimate = MemoryEstimate.For(model, lora, engine, options);
        // The CPU accelerator reports no limit of its own: its tensors live in host memory, so that is the budget.
        long budget = options.MemoryBudgetBytes
            ?? (device.Kind == DeviceKind.Cpu ? Math.Min(device.MemoryBytes, GC.GetGCMemoryInfo().TotalAvailableMemoryBytes) : device.MemoryBytes);
        if (Estimate.TotalBytes > budget)
        {
            throw new TrainingMemoryException(Estimate, budget);
        }

        _device = device;
        Model = model;
        Lora = lora;
        Options = options;
        _schedule = LearningRateSchedule.WithWarmupRatio(options.Schedule, options.WarmupRatio, options.MaxSteps);
        var layers = model.Projections().Select(p => (p.Name, (object)p.Layer)).ToList();
        IReadOnlyList<string> adapted;
        if (options.LoftQ is LoftQOptions loftQ)
        {
            using CheckpointWeightSource dense = CheckpointWeightSource.Open(loftQ.DenseCheckpoint);
            adapted = LoraAttachment.AttachLoftQ(device, layers, lora, dense, loftQ.Iterations);
        }
        else
        {
            adapted = LoraAttachment.AttachNew(device, layers, lora, options.Seed);
        }

        if (adapted.Count == 0)
        {
            throw new ArgumentException("The LoRA config's target_modules match no projection of the model.", nameof(lora));
        }

        Engine = new TrainingEngine(device, model, engine);
        long count = Engine.Parameters.Count;
        Optimizer = options.Optimizer switch
        {
            OptimizerKind.AdamW => new AdamWOptimizer(device, count, options.AdamW),
            OptimizerKind.PagedAdamW32Bit => new PagedAdamWOptimizer(device, count, options.AdamW),
            OptimizerKind.AdamW8Bit => new EightBitAdamWOptimizer(device, count, options.AdamW),
            _ => new EightBitAdamWOptimizer(device, count, options.AdamW, PagedAdamWOptimizer.DefaultPageElements),
        };
    }

    /// <summary>Raised after every optimizer step.</summary>
    public event Action<StepReport>? StepCompleted;

    /// <summary>
    /// Where the run logs its steps, skipped steps, evaluations and checkpoints (event ids in the docs); none by default.
    /// </summary>
    public ILogger Logger { get; init; } = NullLogger.Instance;

    /// <summary>The model trained.</summary>
    public EngineModel Model { get; }

    /// <summary>The adapters' configuration.</summary>
    public LoraConfig Lora { get; }

    /// <summary>The run's settings.</summary>
    public TrainerOptions Options { get; }

    /// <summary>The memory the run was estimated to need.</summary>
    public MemoryEstimate Estimate { get; }

    /// <summary>The engine (activation arena, flat adapter buffers).</summary>
    public TrainingEngine Engine { get; }

    /// <summary>The optimizer.</summary>
    public AdapterOptimizer Optimizer { get; }

    /// <summary>Optimizer steps run so far (skipped ones included).</summary>
    public int Step { get; private set; }

    /// <summary>Updates applied so far (the optimizer's and the schedule's step count).</summary>
    public int UpdatesApplied { get; private set; }

    /// <summary>
    /// One optimizer step over <paramref name="microBatches"/> (usually <see cref="TrainerOptions.GradientAccumulation"/>
    /// of them): the loss is the mean over all their target tokens, and the host synchronizes once.
    /// </summary>
    /// <exception cref="TrainingDivergedException">A non-finite loss or gradient under <see cref="NonFinitePolicy.Stop"/>.</exception>
    public StepReport TrainStep(IReadOnlyList<PackedBatch> microBatches)
    {
        ArgumentOutOfRangeException.ThrowIfZero(microBatches.Count);
        _clock.Restart();
        int step = Step + 1;
        int targets = microBatches.Sum(b => b.TargetTokens);
        float scale = targets == 0 ? 0f : 1f / targets;
        Engine.BeginStep();
        for (int i = 0; i < microBatches.Count; i++)
        {
            Engine.Accumulate(microBatches[i], scale, DropoutSeed(step, i));
        }

        StepStatistics stats = Engine.ReadStep(scale);
        double lr = Options.LearningRate * _schedule.Factor(UpdatesApplied);
        bool skipped = !stats.Finite;
        if (skipped)
        {
            string? module = FirstNonFiniteModule();
            if (Options.OnNonFinite == NonFinitePolicy.Stop)
            {
                TrainerLog.Diverged(Logger, step, stats.Loss, module);
                throw new TrainingDivergedException(step, module, stats.Loss);
            }

            TrainerLog.StepSkipped(Logger, step, stats.Loss, module);
        }
        else
        {
            // torch's clip_grad_norm_: scale by max_norm / (norm + 1e-6) when that is below 1.
            double clip = Options.MaxGradNorm > 0 ? Math.Min(1.0, Options.MaxGradNorm / (stats.GradientNorm + 1e-6)) : 1.0;
            Optimizer.Step(Engine.Parameters, ++UpdatesApplied, lr, (float)clip);
            Engine.Parameters.RefreshCompute();
        }

        _device.Stream.Synchronize();
        Step = step;
        int tokens = microBatches.Sum(b => b.Tokens);
        var report = new StepReport(step, stats.Loss, lr, stats.GradientNorm, tokens, tokens / Math.Max(1e-9, _clock.Elapsed.TotalSeconds), _device.Allocator.AllocatedBytes, skipped);
        if (!skipped)
        {
            TrainerLog.Step(Logger, step, report.Loss, lr, report.GradientNorm, report.TokensPerSecond, report.DeviceMemoryBytes);
        }

        StepCompleted?.Invoke(report);
        return report;
    }

    /// <summary>Mean loss over the target tokens of <paramref name="batches"/> (no dropout) and its perplexity.</summary>
    public (double Loss, double Perplexity) Evaluate(IEnumerable<PackedBatch> batches)
    {
        double sum = 0;
        long targets = 0;
        foreach (PackedBatch batch in batches)
        {
            sum += Engine.EvaluateLoss(batch) * batch.TargetTokens;
            targets += batch.TargetTokens;
        }

        double loss = targets == 0 ? 0 : sum / targets;
        return (loss, Math.Exp(loss));
    }

    /// <summary>
    /// The adapters as trained, as a PEFT adapter (float32 A and B, the run's config), with the modules trained whole
    /// (modules_to_save) as float32 weights under their parameter paths (model.norm.weight, lm_head.weight, …).
    /// </summary>
    public LoraAdapter ExportAdapter()
    {
        float[] values = Engine.Parameters.Values.ToHost<float>();
        var modules = Engine.Parameters.Entries.Select(e => new LoraModuleWeights(e.Module,
            TensorData.FromSingle(values.AsSpan((int)e.A.Offset, (int)e.A.Count), e.A.Rows, e.A.Columns),
            TensorData.FromSingle(values.AsSpan((int)e.B.Offset, (int)e.B.Count), e.B.Rows, e.B.Columns)));
        var saved = Engine.Parameters.WholeModules.ToDictionary(
            w => w.Module + ".weight",
            w => TensorData.FromSingle(values.AsSpan(checked((int)w.Span.Offset), checked((int)w.Span.Count)), [.. w.Target.Shape]),
            StringComparer.Ordinal);
        // As PEFT saves an all-linear adapter: target_modules lists the module names it found.
        LoraConfig config = Lora;
        if (Lora.TargetModules is [LoraConfig.AllLinear])
        {
            var json = (JsonObject)JsonNode.Parse(Lora.ToJson())!;
            json["target_modules"] = new JsonArray([.. Engine.Parameters.Entries.Select(e => e.Module[(e.Module.LastIndexOf('.') + 1)..]).Distinct().Order(StringComparer.Ordinal).Select(n => (JsonNode?)n)]);
            config = LoraConfig.Parse(json.ToJsonString());
        }

        return new LoraAdapter(config, modules, saved);
    }

    /// <summary>Overwrites the adapters with a saved PEFT adapter's values (same modules and shapes).</summary>
    /// <exception cref="PeftAdapterException">A module is missing or its shapes differ (named).</exception>
    public void ImportAdapter(LoraAdapter adapter)
    {
        float[] values = Engine.Parameters.Values.ToHost<float>();
        foreach (LoraParameters.Entry entry in Engine.Parameters.Entries)
        {
            if (!adapter.Modules.TryGetValue(entry.Module, out LoraModuleWeights? module)
                || module.A.ElementCount != entry.A.Count || module.B.ElementCount != entry.B.Count)
            {
                throw new PeftAdapterException(adapter.SourcePath, entry.Module, $"missing or of other shapes: the model trains A [{entry.A.Rows}, {entry.A.Columns}] and B [{entry.B.Rows}, {entry.B.Columns}]");
            }

            module.A.ToSingle().CopyTo(values.AsSpan((int)entry.A.Offset));
            module.B.ToSingle().CopyTo(values.AsSpan((int)entry.B.Offset));
        }

        foreach (LoraParameters.WholeEntry entry in Engine.Parameters.WholeModules)
        {
            if (!adapter.SavedModules.TryGetValue(entry.Module + ".weight", out TensorData? saved) || saved.ElementCount != entry.Span.Count)
            {
                throw new PeftAdapterException(adapter.SourcePath, entry.Module + ".weight", $"missing or of another shape: modules_to_save trains it whole, [{string.Join(", ", entry.Target.Shape)}]");
            }

            saved.ToSingle().CopyTo(values.AsSpan(checked((int)entry.Span.Offset)));
        }

        Engine.Parameters.Values.CopyFromHost<float>(values);
        Engine.Parameters.RefreshCompute();
    }

    internal void Restore(int step, int updates)
    {
        Step = step;
        UpdatesApplied = updates;
    }

    // Distinct per (seed, step, micro-batch): a resumed run draws the same masks as an uninterrupted one.
    private uint DropoutSeed(int step, int microBatch) =>
        unchecked((uint)Options.Seed * 0x9E3779B1u ^ ((uint)step * 0x85EBCA77u) ^ ((uint)microBatch * 0xC2B2AE3Du));

    // A parameter that is itself NaN/Inf names its module; otherwise the topmost module with a non-finite gradient is
    // where the backward first produced one (everything below it inherits it).
    private string? FirstNonFiniteModule()
    {
        float[] values = Engine.Parameters.Values.ToHost<float>(), gradients = Engine.Parameters.Gradients.ToHost<float>();
        string? topmost = null;
        foreach (LoraParameters.Entry entry in Engine.Parameters.Entries)
        {
            foreach (LoraParameters.Span span in new[] { entry.A, entry.B })
            {
                if (!AllFinite(values.AsSpan((int)span.Offset, (int)span.Count)))
                {
                    return entry.Module;
                }

                if (!AllFinite(gradients.AsSpan((int)span.Offset, (int)span.Count)))
                {
                    topmost = entry.Module;
                }
            }
        }

        foreach (LoraParameters.WholeEntry entry in Engine.Parameters.WholeModules)
        {
            if (!AllFinite(values.AsSpan((int)entry.Span.Offset, (int)entry.Span.Count)))
            {
                return entry.Module;
            }

            topmost ??= AllFinite(gradients.AsSpan((int)entry.Span.Offset, (int)entry.Span.Count)) ? null : entry.Module;
        }

        return topmost;
    }

    private static bool AllFinite(ReadOnlySpan<float> values)
    {
        foreach (float v in values)
        {
            if (!float.IsFinite(v))
            {
                return false;
            }
        }

        return true;
    }

    /// <summary>Frees the optimizer state and the engine; the model keeps its adapters as trained.</summary>
    public void Dispose()
    {
        Optimizer.Dispose();
        Engine.Dispose();
    }
}
