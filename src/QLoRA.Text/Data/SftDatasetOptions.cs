namespace QLoRA.Text.Data;

/// <summary>How a JSONL file becomes training examples.</summary>
public sealed record SftDatasetOptions
{
    /// <summary>Longest example in tokens; longer ones are cut to it (or dropped, with <see cref="Truncate"/> false).</summary>
    public int MaxSequenceLength { get; init; } = 2048;

    /// <summary>Cut examples longer than <see cref="MaxSequenceLength"/> (true) or drop and count them (false).</summary>
    public bool Truncate { get; init; } = true;

    /// <summary>What to do with malformed lines and records the chat template refuses.</summary>
    public BadLinePolicy BadLines { get; init; } = BadLinePolicy.Throw;

    /// <summary>Shuffle the examples (seeded) before the eval split.</summary>
    public bool Shuffle { get; init; } = true;

    /// <summary>Seed of the shuffle.</summary>
    public ulong Seed { get; init; } = 42;

    /// <summary>Share of the examples held out for evaluation (0 for none).</summary>
    public double EvalFraction { get; init; }
}
