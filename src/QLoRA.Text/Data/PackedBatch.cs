namespace QLoRA.Text.Data;

/// <summary>
/// Examples packed end to end into one token row, described by cumulative sequence boundaries so attention never crosses
/// from one example into another (no padding).
/// </summary>
/// <param name="InputIds">All tokens, example after example.</param>
/// <param name="Labels">Per position, the next token when it is a trained target within the same example, else -100 (ignored).</param>
/// <param name="PositionIds">Per position, its index within its own example (RoPE restarts at each example).</param>
/// <param name="CumulativeLengths">Boundaries [0, len0, len0+len1, …]: example k spans [CumulativeLengths[k], CumulativeLengths[k+1]).</param>
public sealed record PackedBatch(int[] InputIds, int[] Labels, int[] PositionIds, int[] CumulativeLengths)
{
    /// <summary>The label that means "no loss here", as PyTorch's cross-entropy <c>ignore_index</c>.</summary>
    public const int IgnoreIndex = -100;

    /// <summary>Number of trained targets: what the loss is normalized by (summed over accumulated micro-batches).</summary>
    public int TargetTokens => Labels.Count(l => l != IgnoreIndex);

    /// <summary>Number of examples packed.</summary>
    public int Sequences => CumulativeLengths.Length - 1;
}
