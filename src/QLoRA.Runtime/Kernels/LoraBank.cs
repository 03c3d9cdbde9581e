using ILGPU;

namespace QLoRA.Runtime.Kernels;

/// <summary>One projection's adapter for one row: where A [rank, in] and B [out, rank] start in its adapter's flat weights.</summary>
internal readonly struct LoraRef<T>(ArrayView<T> weights, long a, long b, int rank, float scale)
    where T : unmanaged
{
    public readonly ArrayView<T> Weights = weights;
    public readonly long A = a, B = b;

    /// <summary>0: the row has no adapter on this projection.</summary>
    public readonly int Rank = rank;
    public readonly float Scale = scale;
}

/// <summary>
/// The adapters of one fused decode step, as its kernels read them: up to eight serving adapters (each one flat buffer
/// of every adapted projection's A and B in the compute dtype, and a table of 4 longs per projection: offset of A,
/// offset of B, rank, bits of the scaling), and each row's slot among them (−1: the base alone). Rows choose their
/// adapter through data, not kernel parameters, so one captured graph serves every row assignment of the same adapters.
/// </summary>
internal readonly struct LoraBank<T>
    where T : unmanaged
{
    public const int Slots = 8;

    /// <summary>Longs per projection in an adapter's table.</summary>
    public const int MetaPerModule = 4;

    private readonly ArrayView<T> _w0, _w1, _w2, _w3, _w4, _w5, _w6, _w7;
    private readonly ArrayView<long> _m0, _m1, _m2, _m3, _m4, _m5, _m6, _m7;
    private readonly ArrayView<int> _rowSlot;

    /// <summary>Host side: <paramref name="weights"/> and <paramref name="meta"/> hold exactly <see cref="Slots"/> views (unused slots repeat a used one).</summary>
    public LoraBank(ArrayView<T>[] weights, ArrayView<long>[] meta, ArrayView<int> rowSlot)
    {
        (_w0, _w1, _w2, _w3, _w4, _w5, _w6, _w7) = (weights[0], weights[1], weights[2], weights[3], weights[4], weights[5], weights[6], weights[7]);
        (_m0, _m1, _m2, _m3, _m4, _m5, _m6, _m7) = (meta[0], meta[1], meta[2], meta[3], meta[4], meta[5], meta[6], meta[7]);
        _rowSlot = rowSlot;
    }

    /// <summary>Row <paramref name="row"/>'s adapter on projection <paramref name="module"/> (rank 0: none).</summary>
    public LoraRef<T> Of(int row, int module)
    {
        int slot = _rowSlot[row];
        if (slot < 0)
        {
            return default;
        }

        ArrayView<long> m = Meta(slot);
        long i = (long)module * MetaPerModule;
        return new LoraRef<T>(Weights(slot), m[i], m[i + 1], (int)m[i + 2], Interop.IntAsFloat((uint)m[i + 3]));
    }

    private ArrayView<T> Weights(int slot) =>
        slot < 4 ? (slot < 2 ? (slot == 0 ? _w0 : _w1) : (slot == 2 ? _w2 : _w3)) : (slot < 6 ? (slot == 4 ? _w4 : _w5) : (slot == 6 ? _w6 : _w7));

    private ArrayView<long> Meta(int slot) =>
        slot < 4 ? (slot < 2 ? (slot == 0 ? _m0 : _m1) : (slot == 2 ? _m2 : _m3)) : (slot < 6 ? (slot == 4 ? _m4 : _m5) : (slot == 6 ? _m6 : _m7));
}

/// <summary>
/// What a fused GEMV needs to add its adapters' deltas: the shrunk inputs xa [rows, 3, maxRank] (float32, x·Aᵀ of each
/// segment's adapter, computed by the kernel before) and the first segment's projection index; Enabled 0: none.
/// </summary>
internal readonly struct LoraEpilogue(ArrayView<float> xa, int module0, int maxRank, bool enabled)
{
    public readonly ArrayView<float> Xa = xa;
    public readonly int Module0 = module0;
    public readonly int MaxRank = maxRank;
    public readonly int Enabled = enabled ? 1 : 0;

    /// <summary>
    /// s·Σ_k xa[b, segment, k]·B[o, k] for every batch row, summed over the warp's lanes in a fixed order; rows without an
    /// adapter on this projection get their bit cleared in <paramref name="mask"/>. Called by every lane of the warp.
    /// </summary>
    public RowSums Deltas<T, TE>(LoraBank<T> bank, int segment, int o, int batch, out int mask)
        where T : unmanaged
        where TE : struct, IElement<T>
    {
        TE e = default;
        var deltas = default(RowSums);
        mask = 0;
        int lanes = Warp.WarpSize, lane = Warp.LaneIdx;
        for (int b = 0; b < batch && Enabled != 0; b++)
        {
            LoraRef<T> r = bank.Of(b, Module0 + segment);
            float partial = 0f;
            long xa = (((long)b * 3) + segment) * MaxRank, bRow = r.B + ((long)o * r.Rank);
            for (int k = lane; k < r.Rank; k += lanes)
            {
                partial += Xa[xa + k] * e.Load(r.Weights[bRow + k]);
            }

            float dot = WarpReduce.Sum(partial);
            if (r.Rank > 0)
            {
                mask |= 1 << b;
                deltas.Set(b, r.Scale * dot);
            }
        }

        return deltas;
    }
}
