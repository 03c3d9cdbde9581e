namespace QLoRA.Core;

/// <summary>
/// Base of every error about a bad input file (safetensors, bitsandbytes layout, PEFT adapter, config.json):
/// names the file and, where there is one, the tensor or field.
/// </summary>
public class CheckpointFormatException : Exception
{
    /// <summary>Creates the exception; the message is prefixed with the file (and tensor or field).</summary>
    public CheckpointFormatException(string filePath, string? itemName, string problem, Exception? inner = null)
        : base(Compose(filePath, itemName, problem), inner)
    {
        FilePath = filePath;
        ItemName = itemName;
        Problem = problem;
    }

    /// <summary>The file at fault.</summary>
    public string FilePath { get; }

    /// <summary>The tensor, key or field at fault, if the problem is local to one.</summary>
    public string? ItemName { get; }

    /// <summary>The problem without the location prefix.</summary>
    public string Problem { get; }

    private static string Compose(string filePath, string? itemName, string problem) =>
        itemName is null ? $"{filePath}: {problem}" : $"{filePath}: '{itemName}': {problem}";
}

/// <summary>A safetensors file (or shard index) violates the format.</summary>
public sealed class SafeTensorsFormatException(string filePath, string? tensorName, string problem, Exception? inner = null)
    : CheckpointFormatException(filePath, tensorName, problem, inner)
{
    /// <summary>The tensor at fault, if any.</summary>
    public string? TensorName => ItemName;
}
