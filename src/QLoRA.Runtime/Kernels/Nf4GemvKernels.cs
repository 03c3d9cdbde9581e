using ILGPU;

namespace QLoRA.Runtime.Kernels;

/// <summary>Sizes of a 4-bit GEMV: y[batch, out] = x[batch, in] · Wᵀ with W [out, in] packed in blocks of 2^BlockShift.</summary>
internal readonly record struct GemvShape(int Batch, int Out, int In, int BlockShift);

/// <summary>
/// Decode-time matrix-vector product straight from packed 4-bit weights (batch 1…8): each warp owns one output row;
/// its lanes read consecutive 16-byte chunks of the row (a warp reads 512 contiguous bytes per step on CUDA, fully
/// coalesced), decode in registers and accumulate every batch row in float32; the lanes' partial sums are combined
/// by a shuffle-down tree. Every order is fixed, so results are bit-reproducible. Needs in % 32 == 0 so rows start
/// on 16-byte boundaries.
/// </summary>
internal static class Nf4GemvKernels
{
    /// <summary><paramref name="x"/> is the input viewed as 16-byte vectors (each row starts on one: in % 32 == 0).</summary>
    public static void Gemv<T, TE, TAbsmax>(ArrayView<UInt4> packed, TAbsmax absmax, ArrayView<float> table, ArrayView<UInt4> x, ArrayView<T> y, GemvShape s)
        where T : unmanaged
        where TE : struct, IElement<T>
        where TAbsmax : struct, IAbsmaxSource
    {
        table = CodeTable.ToShared(table);
        for (int o = WarpRows.First, stride = WarpRows.Stride; o < s.Out; o += stride)
        {
            RowSums acc = Row<T, TE, TAbsmax>(packed, absmax, table, x, s, o).WarpSum(s.Batch);
            if (Warp.LaneIdx == 0)
            {
                acc.Store<T, TE>(y, s.Batch, s.Out, o, 0f);
            }
        }
    }

    /// <summary>
    /// This lane's partial sums of output row <paramref name="o"/> for every batch row: the lane reads chunks lane,
    /// lane + warp, … of the packed row (16 bytes, 32 weights each), decodes them in registers and multiplies.
    /// </summary>
    public static RowSums Row<T, TE, TAbsmax>(ArrayView<UInt4> packed, TAbsmax absmax, ArrayView<float> table, ArrayView<UInt4> x, GemvShape s, int o)
        where T : unmanaged
        where TE : struct, IElement<T>
        where TAbsmax : struct, IAbsmaxSource
    {
        int chunksPerRow = s.In / 32;
        int lanes = Warp.WarpSize, lane = Warp.LaneIdx;
        TE e = default;
        // x as 16-byte vectors: a packed word's eight inputs are one vector (16-bit) or two (float32); batch rows are
        // rowVectors apart. The four words are written out (constant word selection and offsets: no per-word selects
        // or index arithmetic), and each word returns once its batch rows are done, so batch 1 pays one branch per word, not seven.
        int wordVectors = 8 / e.PerVector, rowVectors = s.In / e.PerVector;
        var acc = default(RowSums);
        for (int c = lane; c < chunksPerRow; c += lanes)
        {
            long chunk = ((long)o * chunksPerRow) + c;
            float scale = absmax.Get((chunk << 5) >> s.BlockShift);
            UInt4 bytes = packed[chunk];
            long v = (long)c * 4 * wordVectors;
            acc = Word<T, TE>(acc, x, table, s.Batch, rowVectors, v, bytes.X, scale);
            acc = Word<T, TE>(acc, x, table, s.Batch, rowVectors, v + wordVectors, bytes.Y, scale);
            acc = Word<T, TE>(acc, x, table, s.Batch, rowVectors, v + (2 * wordVectors), bytes.Z, scale);
            acc = Word<T, TE>(acc, x, table, s.Batch, rowVectors, v + (3 * wordVectors), bytes.W, scale);
        }

        return acc;
    }

    // Four packed bytes: eight weights, high nibble first within each byte, times every batch row's eight inputs.
    private static RowSums Word<T, TE>(RowSums acc, ArrayView<UInt4> x, ArrayView<float> table, int batch, int rowVectors, long v, uint w, float scale)
        where T : unmanaged
        where TE : struct, IElement<T>
    {
        var weights = new Eight(
            table[(int)((w >> 4) & 15)] * scale, table[(int)(w & 15)] * scale,
            table[(int)((w >> 12) & 15)] * scale, table[(int)((w >> 8) & 15)] * scale,
            table[(int)((w >> 20) & 15)] * scale, table[(int)((w >> 16) & 15)] * scale,
            table[(int)(w >> 28)] * scale, table[(int)((w >> 24) & 15)] * scale);
        // One branch per batch row actually present: batch 1 leaves after the first.
        acc.Y0 += Dot<T, TE>(x, v, weights);
        if (batch < 2) { return acc; }
        acc.Y1 += Dot<T, TE>(x, v + rowVectors, weights);
        if (batch < 3) { return acc; }
        acc.Y2 += Dot<T, TE>(x, v + (2L * rowVectors), weights);
        if (batch < 4) { return acc; }
        acc.Y3 += Dot<T, TE>(x, v + (3L * rowVectors), weights);
        if (batch < 5) { return acc; }
        acc.Y4 += Dot<T, TE>(x, v + (4L * rowVectors), weights);
        if (batch < 6) { return acc; }
        acc.Y5 += Dot<T, TE>(x, v + (5L * rowVectors), weights);
        if (batch < 7) { return acc; }
        acc.Y6 += Dot<T, TE>(x, v + (6L * rowVectors), weights);
        if (batch < 8) { return acc; }
        acc.Y7 += Dot<T, TE>(x, v + (7L * rowVectors), weights);
        return acc;
    }

    /// <summary>Eight decoded weights of one packed word.</summary>
    private readonly struct Eight(float w0, float w1, float w2, float w3, float w4, float w5, float w6, float w7)
    {
        public readonly float W0 = w0, W1 = w1, W2 = w2, W3 = w3, W4 = w4, W5 = w5, W6 = w6, W7 = w7;
    }

    // Σ x_i · w_i over the eight inputs at 16-byte vector v (and v + 1 for float32), in a fixed order.
    private static float Dot<T, TE>(ArrayView<UInt4> x, long v, Eight w)
        where T : unmanaged
        where TE : struct, IElement<T>
    {
        TE e = default;
        UInt4 v0 = x[v];
        UInt4 v1 = e.PerVector == 8 ? v0 : x[v + 1];
        int half = e.PerVector == 8 ? 4 : 0; // where elements 4…7 sit: the same vector (16-bit) or the next (float32)
        UInt4 high = e.PerVector == 8 ? v0 : v1;
        float sum = (e.FromVector(v0, 0) * w.W0) + (e.FromVector(v0, 1) * w.W1);
        sum += (e.FromVector(v0, 2) * w.W2) + (e.FromVector(v0, 3) * w.W3);
        sum += (e.FromVector(high, half) * w.W4) + (e.FromVector(high, half + 1) * w.W5);
        sum += (e.FromVector(high, half + 2) * w.W6) + (e.FromVector(high, half + 3) * w.W7);
        return sum;
    }
}

/// <summary>One output row's sums for up to eight batch rows (a lane's partials, or the warp's totals after <see cref="WarpSum"/>).</summary>
internal struct RowSums
{
    public float Y0, Y1, Y2, Y3, Y4, Y5, Y6, Y7;

    /// <summary>The warp's totals by a shuffle-down tree (lane 0 holds them); batch is uniform across the warp.</summary>
    public RowSums WarpSum(int batch)
    {
        RowSums r = this;
        for (int offset = Warp.WarpSize / 2; offset > 0; offset /= 2)
        {
            r.Y0 += Warp.ShuffleDown(r.Y0, offset);
            if (batch > 1) { r.Y1 += Warp.ShuffleDown(r.Y1, offset); }
            if (batch > 2) { r.Y2 += Warp.ShuffleDown(r.Y2, offset); }
            if (batch > 3) { r.Y3 += Warp.ShuffleDown(r.Y3, offset); }
            if (batch > 4) { r.Y4 += Warp.ShuffleDown(r.Y4, offset); }
            if (batch > 5) { r.Y5 += Warp.ShuffleDown(r.Y5, offset); }
            if (batch > 6) { r.Y6 += Warp.ShuffleDown(r.Y6, offset); }
            if (batch > 7) { r.Y7 += Warp.ShuffleDown(r.Y7, offset); }
        }

        return r;
    }

    /// <summary>Sets batch row <paramref name="b"/>'s sum.</summary>
    public void Set(int b, float value)
    {
        if (b == 0) { Y0 = value; }
        else if (b == 1) { Y1 = value; }
        else if (b == 2) { Y2 = value; }
        else if (b == 3) { Y3 = value; }
        else if (b == 4) { Y4 = value; }
        else if (b == 5) { Y5 = value; }
        else if (b == 6) { Y6 = value; }
        else { Y7 = value; }
    }

    /// <summary>Batch row <paramref name="b"/>'s sum.</summary>
    public readonly float Get(int b) => b == 0 ? Y0 : b == 1 ? Y1 : b == 2 ? Y2 : b == 3 ? Y3 : b == 4 ? Y4 : b == 5 ? Y5 : b == 6 ? Y6 : Y7;

    /// <summary>y[b, o] = sum_b + bias for every batch row, rounded once to the dtype.</summary>
    public readonly void Store<T, TE>(ArrayView<T> y, int batch, int outFeatures, int o, float bias)
        where T : unmanaged
        where TE : struct, IElement<T>
    {
        TE e = default;
        for (int b = 0; b < batch; b++)
        {
            y[((long)b * outFeatures) + o] = e.Store(bias == 0f ? Get(b) : Get(b) + bias); // no bias: the sum as it is (−0 stays −0)
        }
    }

    /// <summary>
    /// As <see cref="Store{T, TE}(ArrayView{T}, int, int, int, float)"/>, plus each adapted row's delta (rows whose bit is
    /// set in <paramref name="mask"/>) before the single rounding; the other rows are stored exactly as without adapters.
    /// </summary>
    public readonly void Store<T, TE>(ArrayView<T> y, int batch, int outFeatures, int o, float bias, RowSums deltas, int mask)
        where T : unmanaged
        where TE : struct, IElement<T>
    {
        TE e = default;
        for (int b = 0; b < batch; b++)
        {
            float sum = bias == 0f ? Get(b) : Get(b) + bias;
            y[((long)b * outFeatures) + o] = e.Store((mask & (1 << b)) != 0 ? sum + deltas.Get(b) : sum);
        }
    }
}
