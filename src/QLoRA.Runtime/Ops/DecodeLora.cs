using QLoRA.Runtime.Kernels;
using QLoRA.Runtime.Tensors;

namespace QLoRA.Runtime.Ops;

/// <summary>
/// The adapters of one fused decode step as the host hands them to the kernels: up to
/// <see cref="LoraBank{T}.Slots"/> adapters' flat weights and tables, each row's slot (device I32 [rows], −1: none),
/// and the two shrink buffers — <see cref="XaNext"/> (F32 [rows, 3, maxRank]: the next projections' shrink, written by
/// add + norm) and <see cref="XaOwn"/> (F32 [rows, maxRank]: o's or down's shrink, written by their GEMV).
/// </summary>
internal sealed class DecodeLora
{
    private readonly DeviceTensor[] _weights;
    private readonly DeviceTensor[] _meta;

    /// <param name="weights">1…8 adapters' flat compute-dtype weights (padded to 8 by repeating the first).</param>
    /// <param name="meta">Their I64 tables, 4 per projection.</param>
    /// <param name="rowSlot">I32 [rows]: each row's index into <paramref name="weights"/>, −1 for none.</param>
    /// <param name="xaNext">F32 [≥ rows · 3 · maxRank].</param>
    /// <param name="xaOwn">F32 [≥ rows · maxRank].</param>
    /// <param name="maxRank">The shrink buffers' row stride (≥ every adapter's rank).</param>
    /// <param name="enabled">False: a step without adapters.</param>
    public DecodeLora(IReadOnlyList<DeviceTensor> weights, IReadOnlyList<DeviceTensor> meta, DeviceTensor rowSlot, DeviceTensor xaNext, DeviceTensor xaOwn, int maxRank, bool enabled)
    {
        if (weights.Count is 0 or > LoraBank<float>.Slots || meta.Count != weights.Count)
        {
            throw new ArgumentException($"A decode step takes 1…{LoraBank<float>.Slots} adapters (got {weights.Count}).", nameof(weights));
        }

        _weights = [.. Enumerable.Range(0, LoraBank<float>.Slots).Select(i => weights[i < weights.Count ? i : 0])];
        _meta = [.. Enumerable.Range(0, LoraBank<float>.Slots).Select(i => meta[i < meta.Count ? i : 0])];
        RowSlot = rowSlot;
        XaNext = xaNext;
        XaOwn = xaOwn;
        MaxRank = Math.Max(1, maxRank);
        Enabled = enabled;
    }

    public DeviceTensor RowSlot { get; }

    public DeviceTensor XaNext { get; }

    public DeviceTensor XaOwn { get; }

    /// <summary>The largest rank of the step's adapters (the shrink buffers' row stride).</summary>
    public int MaxRank { get; }

    /// <summary>False: a step without adapters (the kernels add nothing and read no adapter).</summary>
    public bool Enabled { get; }

    public LoraBank<T> Bank<T>()
        where T : unmanaged =>
        new([.. _weights.Select(w => w.View<T>())], [.. _meta.Select(m => m.View<long>())], RowSlot.View<int>());

    /// <summary>The GEMV epilogue adding the shrink in <see cref="XaNext"/> for projections module0, module0 + 1, ….</summary>
    public LoraEpilogue Epilogue(int module0) => new(XaNext.View<float>(), module0, MaxRank, Enabled);
}
