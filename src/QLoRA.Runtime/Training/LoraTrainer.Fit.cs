using System.Globalization;
using System.Text.Json.Nodes;
using QLoRA.Core;
using QLoRA.Text;
using QLoRA.Text.Data;
using EnginePackedBatch = QLoRA.Runtime.Engine.PackedBatch;

namespace QLoRA.Runtime.Training;

/// <summary>How <see cref="LoraTrainer.Fit"/> runs over a dataset.</summary>
public sealed record FitOptions
{
    /// <summary>Passes over the training examples (the run also stops at <see cref="TrainerOptions.MaxSteps"/>).</summary>
    public int Epochs { get; init; } = 1;

    /// <summary>Where checkpoints (checkpoint-N), metrics.jsonl and the final adapter go; null keeps nothing on disk.</summary>
    public string? OutputDirectory { get; init; }

    /// <summary>Write a checkpoint every this many steps (0: only at the end and on cancellation).</summary>
    public int CheckpointEvery { get; init; }

    /// <summary>Evaluate on the eval examples every this many steps (0: only at the end).</summary>
    public int EvalEvery { get; init; }

    /// <summary>Seed of the order of packed rows within each epoch.</summary>
    public ulong ShuffleSeed { get; init; } = 42;

    /// <summary>A checkpoint folder to resume from (its data position is honoured).</summary>
    public string? ResumeFrom { get; init; }
}

/// <summary>What a <see cref="LoraTrainer.Fit"/> run ended with.</summary>
/// <param name="Steps">Optimizer steps done (in all, including those before a resume).</param>
/// <param name="LastLoss">Loss of the last step.</param>
/// <param name="EvalLoss">Final eval loss, when there are eval examples.</param>
/// <param name="Cancelled">The run was cancelled (a checkpoint was written when there is an output folder).</param>
/// <param name="LastCheckpoint">The last checkpoint written, or null.</param>
public sealed record FitResult(int Steps, double LastLoss, double? EvalLoss, bool Cancelled, string? LastCheckpoint);

public sealed partial class LoraTrainer
{
    /// <summary>
    /// Trains on tokenized examples: each epoch packs them into micro-batches of the engine's token budget (no
    /// cross-attention between packed examples), shuffles the rows with a seed, and runs optimizer steps of
    /// <see cref="TrainerOptions.GradientAccumulation"/> micro-batches; evaluates, logs every step to metrics.jsonl and
    /// checkpoints as asked. Cancellation finishes the current step, writes a checkpoint and returns.
    /// </summary>
    /// <exception cref="ArgumentException">No training example.</exception>
    public FitResult Fit(IReadOnlyList<TrainingExample> train, IReadOnlyList<TrainingExample>? eval, FitOptions options, CancellationToken cancellation = default)
    {
        if (train.Count == 0)
        {
            throw new ArgumentException("There is no training example.", nameof(train));
        }

        List<EnginePackedBatch>? evalBatches = eval is { Count: > 0 } ? [.. Packer.Pack(eval, Engine.Options.MaxTokens).Select(ToEngine)] : null;
        long position = options.ResumeFrom is string resume ? TrainingCheckpoint.Load(this, resume) : 0;
        string? output = options.OutputDirectory is string dir ? Directory.CreateDirectory(dir).FullName : null;
        using StreamWriter? metrics = output is null ? null : new StreamWriter(Path.Combine(output, "metrics.jsonl"), append: options.ResumeFrom is not null);
        string? lastCheckpoint = null;
        TrainerLog.Started(Logger, Step, Engine.Parameters.TrainableCount, train.Count, Estimate.ToString());
        double lastLoss = double.NaN;
        bool cancelled = false;
        IEnumerable<EnginePackedBatch> stream = MicroBatches(train, options).Skip(checked((int)position));
        using IEnumerator<EnginePackedBatch> batches = stream.GetEnumerator();
        var step = new List<EnginePackedBatch>(Options.GradientAccumulation);
        while (Step < Options.MaxSteps)
        {
            step.Clear();
            while (step.Count < Options.GradientAccumulation && batches.MoveNext())
            {
                step.Add(batches.Current);
            }

            if (step.Count == 0)
            {
                break; // the epochs are done
            }

            StepReport report = TrainStep(step);
            position += step.Count;
            lastLoss = report.Loss;
            metrics?.WriteLine(new JsonObject
            {
                ["step"] = report.Step, ["loss"] = report.Loss, ["learning_rate"] = report.LearningRate, ["grad_norm"] = report.GradientNorm,
                ["tokens"] = report.Tokens, ["tokens_per_second"] = report.TokensPerSecond, ["device_memory_bytes"] = report.DeviceMemoryBytes, ["skipped"] = report.Skipped,
            }.ToJsonString());
            if (evalBatches is not null && options.EvalEvery > 0 && report.Step % options.EvalEvery == 0)
            {
                WriteEval(metrics, report.Step, evalBatches);
            }

            cancelled = cancellation.IsCancellationRequested;
            if (output is not null && (cancelled || (options.CheckpointEvery > 0 && report.Step % options.CheckpointEvery == 0)))
            {
                lastCheckpoint = Path.Combine(output, string.Create(CultureInfo.InvariantCulture, $"checkpoint-{report.Step}"));
                TrainingCheckpoint.Save(this, lastCheckpoint, position);
                TrainerLog.CheckpointWritten(Logger, report.Step, lastCheckpoint);
            }

            if (cancelled)
            {
                break;
            }
        }

        double? evalLoss = evalBatches is null || cancelled ? null : WriteEval(metrics, Step, evalBatches);
        if (output is not null && !cancelled)
        {
            ExportAdapter().Save(Path.Combine(output, "adapter"));
        }

        return new FitResult(Step, lastLoss, evalLoss, cancelled, lastCheckpoint);
    }

    private double WriteEval(StreamWriter? metrics, int step, List<EnginePackedBatch> batches)
    {
        (double loss, double perplexity) = Evaluate(batches);
        TrainerLog.Evaluated(Logger, step, loss, perplexity);
        metrics?.WriteLine(new JsonObject { ["step"] = step, ["eval_loss"] = loss, ["eval_perplexity"] = perplexity }.ToJsonString());
        metrics?.Flush();
        return loss;
    }

    // The micro-batch stream of every epoch, deterministic for the examples and the seed (so a position resumes it).
    private IEnumerable<EnginePackedBatch> MicroBatches(IReadOnlyList<TrainingExample> train, FitOptions options)
    {
        for (int epoch = 0; epoch < options.Epochs; epoch++)
        {
            List<QLoRA.Text.Data.PackedBatch> rows = Packer.Pack(train, Engine.Options.MaxTokens);
            SplitMix64.Shuffle(rows, options.ShuffleSeed + (ulong)epoch);
            foreach (QLoRA.Text.Data.PackedBatch row in rows)
            {
                yield return ToEngine(row);
            }
        }
    }

    private static EnginePackedBatch ToEngine(QLoRA.Text.Data.PackedBatch row) => new(row.InputIds, row.Labels, row.CumulativeLengths);
}
