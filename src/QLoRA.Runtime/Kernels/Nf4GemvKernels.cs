using ILGPU;

namespace QLoRA.Runtime.Kernels;

/// <summary>Sizes of a 4-bit GEMV: y[batch, out] = x[batch, in] · Wᵀ with W [out, in] packed.</summary>
internal readonly record struct GemvShape(int Batch, int Out, int In, int BlockSize);

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
        TE e = default;
        int chunksPerRow = s.In / 32;
        int lanes = Warp.WarpSize, lane = Warp.LaneIdx;
        // Warps are aligned in the grid and the stride is a multiple of the warp size: a warp's lanes share a row and
        // leave the loop together, as the shuffles need.
        for (long g = Grid.GlobalIndex.X; g / lanes < s.Out; g += (long)Grid.DimX * Group.DimX)
        {
            int o = (int)(g / lanes);
            float y0 = 0, y1 = 0, y2 = 0, y3 = 0, y4 = 0, y5 = 0, y6 = 0, y7 = 0;
            for (int c = lane; c < chunksPerRow; c += lanes)
            {
                long chunk = ((long)o * chunksPerRow) + c;
                float scale = absmax.Get(chunk * 32 / s.BlockSize);
                UInt4 bytes = packed[chunk];
                int column = c * 32;
                for (int word = 0; word < 4; word++)
                {
                    // Four packed bytes: eight weights, high nibble first within each byte.
                    uint w = word == 0 ? bytes.X : word == 1 ? bytes.Y : word == 2 ? bytes.Z : bytes.W;
                    var weights = new Eight(
                        table[(int)((w >> 4) & 15)] * scale, table[(int)(w & 15)] * scale,
                        table[(int)((w >> 12) & 15)] * scale, table[(int)((w >> 8) & 15)] * scale,
                        table[(int)((w >> 20) & 15)] * scale, table[(int)((w >> 16) & 15)] * scale,
                        table[(int)(w >> 28)] * scale, table[(int)((w >> 24) & 15)] * scale);
                    long first = column + (word * 8);
                    y0 += Dot<T, TE>(x, s, 0, first, weights);
                    if (s.Batch > 1) { y1 += Dot<T, TE>(x, s, 1, first, weights); }
                    if (s.Batch > 2) { y2 += Dot<T, TE>(x, s, 2, first, weights); }
                    if (s.Batch > 3) { y3 += Dot<T, TE>(x, s, 3, first, weights); }
                    if (s.Batch > 4) { y4 += Dot<T, TE>(x, s, 4, first, weights); }
                    if (s.Batch > 5) { y5 += Dot<T, TE>(x, s, 5, first, weights); }
                    if (s.Batch > 6) { y6 += Dot<T, TE>(x, s, 6, first, weights); }
                    if (s.Batch > 7) { y7 += Dot<T, TE>(x, s, 7, first, weights); }
                }
            }

            for (int offset = lanes / 2; offset > 0; offset /= 2)
            {
                // Batch is uniform across the warp, so every lane takes the same shuffles.
                y0 += Warp.ShuffleDown(y0, offset);
                if (s.Batch > 1) { y1 += Warp.ShuffleDown(y1, offset); }
                if (s.Batch > 2) { y2 += Warp.ShuffleDown(y2, offset); }
                if (s.Batch > 3) { y3 += Warp.ShuffleDown(y3, offset); }
                if (s.Batch > 4) { y4 += Warp.ShuffleDown(y4, offset); }
                if (s.Batch > 5) { y5 += Warp.ShuffleDown(y5, offset); }
                if (s.Batch > 6) { y6 += Warp.ShuffleDown(y6, offset); }
                if (s.Batch > 7) { y7 += Warp.ShuffleDown(y7, offset); }
            }

            if (lane != 0)
            {
                continue;
            }

            y[o] = e.Store(y0);
            if (s.Batch > 1) { y[s.Out + o] = e.Store(y1); }
            if (s.Batch > 2) { y[(2L * s.Out) + o] = e.Store(y2); }
            if (s.Batch > 3) { y[(3L * s.Out) + o] = e.Store(y3); }
            if (s.Batch > 4) { y[(4L * s.Out) + o] = e.Store(y4); }
            if (s.Batch > 5) { y[(5L * s.Out) + o] = e.Store(y5); }
            if (s.Batch > 6) { y[(6L * s.Out) + o] = e.Store(y6); }
            if (s.Batch > 7) { y[(7L * s.Out) + o] = e.Store(y7); }
        }
    }

    /// <summary>Eight decoded weights of one packed word.</summary>
    private readonly struct Eight(float w0, float w1, float w2, float w3, float w4, float w5, float w6, float w7)
    {
        public readonly float W0 = w0, W1 = w1, W2 = w2, W3 = w3, W4 = w4, W5 = w5, W6 = w6, W7 = w7;
    }

    // Σ x[row, first + i] · w_i over eight inputs read as one (16-bit) or two (float32) 16-byte vectors, in a fixed order.
    private static float Dot<T, TE>(ArrayView<UInt4> x, GemvShape s, int row, long first, Eight w)
        where T : unmanaged
        where TE : struct, IElement<T>
    {
        TE e = default;
        long element = ((long)row * s.In) + first;
        UInt4 v0 = x[element / e.PerVector];
        UInt4 v1 = e.PerVector == 8 ? v0 : x[(element / e.PerVector) + 1];
        int half = e.PerVector == 8 ? 4 : 0; // where elements 4…7 sit: the same vector (16-bit) or the next (float32)
        UInt4 high = e.PerVector == 8 ? v0 : v1;
        float sum = (e.FromVector(v0, 0) * w.W0) + (e.FromVector(v0, 1) * w.W1);
        sum += (e.FromVector(v0, 2) * w.W2) + (e.FromVector(v0, 3) * w.W3);
        sum += (e.FromVector(high, half) * w.W4) + (e.FromVector(high, half + 1) * w.W5);
        sum += (e.FromVector(high, half + 2) * w.W6) + (e.FromVector(high, half + 3) * w.W7);
        return sum;
    }
}
