using Microsoft.Extensions.Logging;

namespace QLoRA.Runtime.Training;

/// <summary>
/// What the trainer tells an <see cref="ILogger"/> (source-generated, so a disabled level costs a check and nothing
/// else). Event ids are stable: 1 step, 2 skipped step, 3 divergence, 4 evaluation, 5 checkpoint, 6 run start.
/// The structured values carry the same names as metrics.jsonl's fields.
/// </summary>
internal static partial class TrainerLog
{
    [LoggerMessage(EventId = 1, Level = LogLevel.Information,
        Message = "step {Step}: loss {Loss:F4}, lr {LearningRate:G3}, grad norm {GradientNorm:G3}, {TokensPerSecond:F0} tokens/s, device memory {DeviceMemoryBytes} bytes")]
    public static partial void Step(ILogger logger, int step, double loss, double learningRate, double gradientNorm, double tokensPerSecond, long deviceMemoryBytes);

    [LoggerMessage(EventId = 2, Level = LogLevel.Warning,
        Message = "step {Step} skipped: the loss ({Loss}) or a gradient is not finite; first module: {Module}")]
    public static partial void StepSkipped(ILogger logger, int step, double loss, string? module);

    [LoggerMessage(EventId = 3, Level = LogLevel.Error,
        Message = "training diverged at step {Step}: the loss ({Loss}) or a gradient is not finite; first module: {Module}")]
    public static partial void Diverged(ILogger logger, int step, double loss, string? module);

    [LoggerMessage(EventId = 4, Level = LogLevel.Information, Message = "eval at step {Step}: loss {EvalLoss:F4}, perplexity {EvalPerplexity:F3}")]
    public static partial void Evaluated(ILogger logger, int step, double evalLoss, double evalPerplexity);

    [LoggerMessage(EventId = 5, Level = LogLevel.Information, Message = "checkpoint of step {Step} written to {Path}")]
    public static partial void CheckpointWritten(ILogger logger, int step, string path);

    [LoggerMessage(EventId = 6, Level = LogLevel.Information,
        Message = "training from step {Step}: {TrainableParameters} trainable parameters, {Examples} examples; memory estimate {Estimate}")]
    public static partial void Started(ILogger logger, int step, long trainableParameters, int examples, string estimate);
}
