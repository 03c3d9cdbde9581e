namespace QLoRA.Runtime.Training;

/// <summary>How the learning rate moves over training, after a linear warmup from zero.</summary>
public enum LearningRateScheduleKind
{
    /// <summary>Constant after warmup (QLoRA's default).</summary>
    Constant,

    /// <summary>Linear decay to zero at the last step.</summary>
    Linear,

    /// <summary>Half a cosine to zero at the last step.</summary>
    Cosine,
}

/// <summary>
/// transformers' <c>get_{constant,linear,cosine}_schedule_with_warmup</c>: the factor of the peak learning rate for a
/// 0-based optimizer step (so the first step of a warmup runs at zero, as there).
/// </summary>
/// <param name="Kind">The shape after warmup.</param>
/// <param name="WarmupSteps">Steps of linear warmup.</param>
/// <param name="TotalSteps">Steps of the run (the decaying schedules reach zero there).</param>
public sealed record LearningRateSchedule(LearningRateScheduleKind Kind, int WarmupSteps, int TotalSteps)
{
    /// <summary>A schedule whose warmup is <paramref name="warmupRatio"/> of <paramref name="totalSteps"/>, rounded up (transformers' warmup_ratio).</summary>
    /// <exception cref="ArgumentOutOfRangeException">The ratio is outside [0, 1] or the total is negative.</exception>
    public static LearningRateSchedule WithWarmupRatio(LearningRateScheduleKind kind, double warmupRatio, int totalSteps)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(totalSteps);
        if (!(warmupRatio >= 0 && warmupRatio <= 1))
        {
            throw new ArgumentOutOfRangeException(nameof(warmupRatio), warmupRatio, "The warmup ratio must be in [0, 1].");
        }

        return new LearningRateSchedule(kind, (int)Math.Ceiling(totalSteps * warmupRatio), totalSteps);
    }

    /// <summary>The factor of the peak learning rate at 0-based step <paramref name="step"/>.</summary>
    public double Factor(int step)
    {
        if (step < WarmupSteps)
        {
            return (double)step / Math.Max(1, WarmupSteps);
        }

        double progress = (double)(step - WarmupSteps) / Math.Max(1, TotalSteps - WarmupSteps);
        return Kind switch
        {
            LearningRateScheduleKind.Constant => 1.0,
            LearningRateScheduleKind.Linear => Math.Max(0.0, (double)(TotalSteps - step) / Math.Max(1, TotalSteps - WarmupSteps)),
            _ => Math.Max(0.0, 0.5 * (1.0 + Math.Cos(Math.PI * progress))),
        };
    }
}
