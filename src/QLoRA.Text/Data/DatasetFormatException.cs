namespace QLoRA.Text.Data;

/// <summary>A line of a JSONL dataset is malformed; names the file and the 1-based line.</summary>
public sealed class DatasetFormatException(string filePath, int line, string problem, Exception? inner = null)
    : TextFormatException(filePath, $"line {line}", problem, inner)
{
    /// <summary>1-based line number.</summary>
    public int Line { get; } = line;
}
