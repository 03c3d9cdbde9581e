namespace QLoRA.Runtime.Engine;

/// <summary>
/// A micro-batch of sequences packed end to end with no padding: token ids, the target of every position (already
/// shifted: the id the model should predict there, or <see cref="IgnoreIndex"/>), and the sequences' cumulative
/// boundaries. Attention never crosses a boundary and positions restart at each one, so a packed batch computes what
/// its sequences would one by one.
/// </summary>
public sealed class PackedBatch
{
    /// <summary>A target that contributes no loss (transformers' -100).</summary>
    public const int IgnoreIndex = Ops.CrossEntropy.DefaultIgnoreIndex;

    /// <summary>Packs ids, targets and boundaries after checking them.</summary>
    /// <exception cref="ArgumentException">Lengths disagree, boundaries are not 0 = b₀ &lt; … &lt; bₙ = tokens, or there are no tokens.</exception>
    public PackedBatch(int[] ids, int[] labels, int[] boundaries)
    {
        if (ids.Length == 0)
        {
            throw new ArgumentException("A batch needs at least one token.", nameof(ids));
        }

        if (labels.Length != ids.Length)
        {
            throw new ArgumentException($"{labels.Length} labels for {ids.Length} tokens.", nameof(labels));
        }

        if (boundaries.Length < 2 || boundaries[0] != 0 || boundaries[^1] != ids.Length)
        {
            throw new ArgumentException($"Boundaries must run from 0 to {ids.Length}; got [{string.Join(", ", boundaries)}].", nameof(boundaries));
        }

        for (int i = 1; i < boundaries.Length; i++)
        {
            if (boundaries[i] <= boundaries[i - 1])
            {
                throw new ArgumentException($"Boundaries must increase; got {boundaries[i - 1]} then {boundaries[i]}.", nameof(boundaries));
            }
        }

        Ids = ids;
        Labels = labels;
        Boundaries = boundaries;
        TargetTokens = labels.Count(l => l != IgnoreIndex);
    }

    /// <summary>Token ids [tokens].</summary>
    public int[] Ids { get; }

    /// <summary>Target per position [tokens], or <see cref="IgnoreIndex"/>.</summary>
    public int[] Labels { get; }

    /// <summary>Cumulative sequence boundaries [sequences + 1].</summary>
    public int[] Boundaries { get; }

    /// <summary>Tokens of all sequences.</summary>
    public int Tokens => Ids.Length;

    /// <summary>Sequences packed.</summary>
    public int Sequences => Boundaries.Length - 1;

    /// <summary>Positions whose target counts.</summary>
    public int TargetTokens { get; }

    /// <summary>Each token's position within its own sequence.</summary>
    public int[] Positions()
    {
        var positions = new int[Tokens];
        for (int s = 0; s < Sequences; s++)
        {
            for (int t = Boundaries[s]; t < Boundaries[s + 1]; t++)
            {
                positions[t] = t - Boundaries[s];
            }
        }

        return positions;
    }

    /// <summary>
    /// Packs whole sequences for next-token prediction: every position's target is the sequence's next token, the last
    /// of each sequence has none (no target crosses into the next sequence).
    /// </summary>
    /// <exception cref="ArgumentException">No sequences, or an empty one.</exception>
    public static PackedBatch ForNextToken(IReadOnlyList<int[]> sequences)
    {
        if (sequences.Count == 0 || sequences.Any(s => s.Length == 0))
        {
            throw new ArgumentException("Every sequence of a batch needs at least one token.", nameof(sequences));
        }

        int[] ids = [.. sequences.SelectMany(s => s)];
        var labels = new int[ids.Length];
        var boundaries = new int[sequences.Count + 1];
        for (int s = 0; s < sequences.Count; s++)
        {
            int start = boundaries[s];
            boundaries[s + 1] = start + sequences[s].Length;
            for (int i = 0; i < sequences[s].Length; i++)
            {
                labels[start + i] = i + 1 < sequences[s].Length ? sequences[s][i + 1] : IgnoreIndex;
            }
        }

        return new PackedBatch(ids, labels, boundaries);
    }
}
