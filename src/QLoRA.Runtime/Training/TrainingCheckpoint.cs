using System.Globalization;
using System.Text.Json.Nodes;
using QLoRA.Core;
using QLoRA.Core.HuggingFace;
using QLoRA.Core.Peft;
using QLoRA.Core.SafeTensors;

namespace QLoRA.Runtime.Training;

/// <summary>
/// A training checkpoint folder: the adapter in PEFT's format (so a checkpoint is also a loadable adapter, as
/// transformers' checkpoint-N folders are), the optimizer's exact state (optimizer.safetensors) and the trainer's
/// counters and data position (trainer_state.json). Written into a sibling folder and swapped in, so a crash mid-write
/// leaves the previous checkpoint whole.
/// </summary>
public static class TrainingCheckpoint
{
    /// <summary>File of the optimizer state.</summary>
    public const string OptimizerFileName = "optimizer.safetensors";

    /// <summary>File of the trainer's counters.</summary>
    public const string StateFileName = "trainer_state.json";

    /// <summary>Writes <paramref name="trainer"/>'s state to <paramref name="folder"/> (replacing a checkpoint there).</summary>
    /// <param name="trainer">The trainer.</param>
    /// <param name="folder">Checkpoint folder.</param>
    /// <param name="dataPosition">Where the data stream continues (the caller's meaning: examples consumed, a file offset…).</param>
    public static void Save(LoraTrainer trainer, string folder, long dataPosition)
    {
        string full = Path.GetFullPath(folder).TrimEnd(Path.DirectorySeparatorChar);
        string partial = $"{full}.partial-{Guid.NewGuid():N}";
        try
        {
            trainer.ExportAdapter().Save(partial);
            IReadOnlyDictionary<string, TensorData> state = trainer.Optimizer.ReadState();
            SafeTensorsWriter.Save(Path.Combine(partial, OptimizerFileName),
                state.Select(kv => (new SafeTensorSpec(kv.Key, kv.Value.Dtype, kv.Value.Shape), (ReadOnlyMemory<byte>)kv.Value.Data)),
                new Dictionary<string, string> { ["optimizer"] = trainer.Options.Optimizer.ToString() });
            var json = new JsonObject
            {
                ["step"] = trainer.Step,
                ["updates_applied"] = trainer.UpdatesApplied,
                ["data_position"] = dataPosition,
                ["seed"] = trainer.Options.Seed,
                ["optimizer"] = trainer.Options.Optimizer.ToString(),
                ["adapter_parameters"] = trainer.Engine.Parameters.Count,
            };
            AtomicFile.WriteAllText(Path.Combine(partial, StateFileName), json.ToJsonString(new System.Text.Json.JsonSerializerOptions { WriteIndented = true }));

            HuggingFaceFolder.Replace(partial, full);
        }
        finally
        {
            if (Directory.Exists(partial))
            {
                Directory.Delete(partial, recursive: true);
            }
        }
    }

    /// <summary>Restores a checkpoint into <paramref name="trainer"/> (made with the same model, config and options); returns the data position saved.</summary>
    /// <exception cref="CheckpointFormatException">A file is missing or malformed, or the checkpoint is of another run (named).</exception>
    public static long Load(LoraTrainer trainer, string folder)
    {
        string statePath = Path.Combine(folder, StateFileName);
        if (!File.Exists(statePath))
        {
            throw new CheckpointFormatException(statePath, null, "missing: not a training checkpoint folder");
        }

        JsonNode? json;
        try
        {
            json = JsonNode.Parse(File.ReadAllText(statePath));
        }
        catch (System.Text.Json.JsonException e)
        {
            throw new CheckpointFormatException(statePath, null, $"is not valid JSON: {e.Message}", e);
        }

        int step = Field<int>(json, "step", statePath), updates = Field<int>(json, "updates_applied", statePath);
        long position = Field<long>(json, "data_position", statePath), count = Field<long>(json, "adapter_parameters", statePath);
        string optimizer = json?["optimizer"]?.GetValue<string>() ?? "";
        if (count != trainer.Engine.Parameters.Count || optimizer != trainer.Options.Optimizer.ToString())
        {
            throw new CheckpointFormatException(statePath, null, $"is of another run ({optimizer}, {count} adapter parameters; this trainer: {trainer.Options.Optimizer}, {trainer.Engine.Parameters.Count})");
        }

        trainer.ImportAdapter(LoraAdapter.Load(folder));
        string optimizerPath = Path.Combine(folder, OptimizerFileName);
        using (SafeTensorsFile file = SafeTensorsFile.Open(optimizerPath))
        {
            var state = file.Tensors.ToDictionary(t => t.Name, t => new TensorData(t.Dtype, t.Shape, file.GetBytes(t.Name).ToArray()));
            try
            {
                trainer.Optimizer.WriteState(state);
            }
            catch (ArgumentException e)
            {
                throw new CheckpointFormatException(optimizerPath, null, e.Message, e);
            }
        }

        trainer.Restore(step, updates);
        return position;
    }

    private static T Field<T>(JsonNode? json, string name, string path)
    {
        try
        {
            return json?[name] is JsonValue value ? value.GetValue<T>() : throw new CheckpointFormatException(path, name, "missing");
        }
        catch (Exception e) when (e is InvalidOperationException or FormatException)
        {
            throw new CheckpointFormatException(path, name, string.Create(CultureInfo.InvariantCulture, $"is not a {typeof(T).Name}"), e);
        }
    }
}
