using QLoRA.Runtime.Ops;

namespace QLoRA.Runtime.Training;

/// <summary>The optimizers a trainer can use (the names are transformers' <c>optim</c> values).</summary>
public enum OptimizerKind
{
    /// <summary><c>adamw_torch</c>: float32 state in device memory.</summary>
    AdamW,

    /// <summary><c>paged_adamw_32bit</c>: float32 state paged from pinned host memory (QLoRA's default).</summary>
    PagedAdamW32Bit,

    /// <summary><c>adamw_8bit</c>: blockwise 8-bit state in device memory.</summary>
    AdamW8Bit,

    /// <summary><c>paged_adamw_8bit</c>: blockwise 8-bit state paged from pinned host memory.</summary>
    PagedAdamW8Bit,
}

/// <summary>What a step does when its loss or a gradient is NaN or infinite.</summary>
public enum NonFinitePolicy
{
    /// <summary>Leave the adapters and optimizer state as they were, report the step as skipped, go on.</summary>
    SkipStep,

    /// <summary>Throw <see cref="TrainingDivergedException"/> naming the step and the module.</summary>
    Stop,
}

/// <summary>
/// A training run's settings; the defaults are the QLoRA paper's (qlora.py): paged AdamW 32-bit, lr 2e-4, constant
/// after a linear warmup over the first 3% of steps, max_grad_norm 0.3, weight decay 0, gradient accumulation 16.
/// </summary>
public sealed record TrainerOptions
{
    /// <summary>Optimizer steps of the run (the schedule's length).</summary>
    public int MaxSteps { get; init; } = 1000;

    /// <summary>Peak learning rate.</summary>
    public double LearningRate { get; init; } = 2e-4;

    /// <summary>Schedule after warmup.</summary>
    public LearningRateScheduleKind Schedule { get; init; } = LearningRateScheduleKind.Constant;

    /// <summary>Share of <see cref="MaxSteps"/> spent warming up (rounded up to whole steps).</summary>
    public double WarmupRatio { get; init; } = 0.03;

    /// <summary>Global gradient-norm clipping threshold (torch's clip_grad_norm_), or 0 for none.</summary>
    public double MaxGradNorm { get; init; } = 0.3;

    /// <summary>Decoupled weight decay.</summary>
    public double WeightDecay { get; init; }

    /// <summary>AdamW's β₁, β₂ and ε.</summary>
    public (double Beta1, double Beta2, double Epsilon) Betas { get; init; } = (0.9, 0.999, 1e-8);

    /// <summary>The optimizer.</summary>
    public OptimizerKind Optimizer { get; init; } = OptimizerKind.PagedAdamW32Bit;

    /// <summary>Micro-batches accumulated into each optimizer step.</summary>
    public int GradientAccumulation { get; init; } = 16;

    /// <summary>Seed of adapter initialization and dropout masks.</summary>
    public int Seed { get; init; } = 42;

    /// <summary>What to do with a NaN or infinite loss or gradient.</summary>
    public NonFinitePolicy OnNonFinite { get; init; } = NonFinitePolicy.SkipStep;

    /// <summary>
    /// LoftQ initialization instead of PEFT's (A random, B = 0): the folder of the dense checkpoint the 4-bit base was
    /// quantized from, and the alternations; null for PEFT's init.
    /// </summary>
    public LoftQOptions? LoftQ { get; init; }

    /// <summary>Device memory the run may use, or null for the device's (host memory on the CPU accelerator).</summary>
    public long? MemoryBudgetBytes { get; init; }

    internal AdamWOptions AdamW => new(LearningRate, Betas.Beta1, Betas.Beta2, Betas.Epsilon, WeightDecay);
}

/// <summary>One optimizer step as the trainer reports it.</summary>
/// <param name="Step">1-based step number.</param>
/// <param name="Loss">Mean loss over the step's target tokens.</param>
/// <param name="LearningRate">Learning rate the update used.</param>
/// <param name="GradientNorm">Global gradient norm before clipping.</param>
/// <param name="Tokens">Tokens of the step's micro-batches.</param>
/// <param name="TokensPerSecond">Tokens over the step's wall time.</param>
/// <param name="DeviceMemoryBytes">Device memory held by the run's allocator.</param>
/// <param name="Skipped">The update was skipped (non-finite loss or gradient).</param>
public sealed record StepReport(int Step, double Loss, double LearningRate, double GradientNorm, int Tokens, double TokensPerSecond, long DeviceMemoryBytes, bool Skipped);

/// <summary>A non-finite loss or gradient under <see cref="NonFinitePolicy.Stop"/>.</summary>
public sealed class TrainingDivergedException(int step, string? module, double loss)
    : Exception($"Training diverged at step {step}: " + (module is null ? $"the loss is {loss}" : $"the gradient of {module} is not finite (loss {loss})") + ". Lower the learning rate, check the data, or skip such steps (NonFinitePolicy.SkipStep).")
{
    /// <summary>The step.</summary>
    public int Step { get; } = step;

    /// <summary>The first module (PEFT name) whose gradient is not finite, or null when only the loss is.</summary>
    public string? Module { get; } = module;
}

/// <summary>A run that would not fit in device memory, refused before allocating anything.</summary>
public sealed class TrainingMemoryException(MemoryEstimate estimate, long budget)
    : Exception($"This run needs about {estimate.TotalBytes / 1048576.0:F0} MiB of device memory but {budget / 1048576.0:F0} MiB are available ({estimate}). {estimate.Advice(budget)}")
{
    /// <summary>What the run would need.</summary>
    public MemoryEstimate Estimate { get; } = estimate;
}

/// <summary>LoftQ initialization of a run.</summary>
/// <param name="DenseCheckpoint">Folder (or file) of the dense weights the base was quantized from.</param>
/// <param name="Iterations">Alternations of quantization and rank-r SVD.</param>
public sealed record LoftQOptions(string DenseCheckpoint, int Iterations = 1);
