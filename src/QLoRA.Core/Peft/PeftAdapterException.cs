namespace QLoRA.Core.Peft;

/// <summary>A PEFT adapter folder is malformed, inconsistent, or asks for something the runtime cannot honour.</summary>
public sealed class PeftAdapterException(string filePath, string? item, string problem, Exception? inner = null)
    : CheckpointFormatException(filePath, item, problem, inner);
