namespace QLoRA.Core.HuggingFace;

/// <summary>A config.json field is missing, has the wrong type or a value the runtime cannot run.</summary>
public sealed class HfConfigException(string filePath, string? field, string problem, Exception? inner = null)
    : CheckpointFormatException(filePath, field, problem, inner)
{
    /// <summary>The config field at fault.</summary>
    public string? Field => ItemName;
}
