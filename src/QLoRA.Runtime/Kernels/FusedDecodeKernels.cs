using ILGPU;

namespace QLoRA.Runtime.Kernels;

/// <summary>One 4-bit weight of a fused GEMV: its packed codes and absmax, where its output goes, and its bias.</summary>
internal readonly struct GemvSegment<T, TAbsmax>(ArrayView<UInt4> packed, TAbsmax absmax, ArrayView<T> y, ArrayView<float> bias, int outFeatures, bool hasBias)
    where T : unmanaged
    where TAbsmax : struct, IAbsmaxSource
{
    public readonly ArrayView<UInt4> Packed = packed;
    public readonly TAbsmax Absmax = absmax;
    public readonly ArrayView<T> Y = y;
    public readonly ArrayView<float> Bias = bias;
    public readonly int Out = outFeatures;
    public readonly int HasBias = hasBias ? 1 : 0;
}

/// <summary>Sizes shared by the fused decode kernels.</summary>
internal readonly record struct FusedShape(int Batch, int In, int BlockShift);

/// <summary>
/// The decode step's fused kernels: one launch where the plain path takes several, each giving bit for bit what the
/// plain ops give (the same sums in the same order, the same single roundings):
/// <list type="bullet">
/// <item>the q, k and v projections as one GEMV over their three 4-bit weights (one read of the input rows, biases added);</item>
/// <item>gate and up as one GEMV whose warps compute row j of both and write silu(gate)·up (SwiGLU in the epilogue);</item>
/// <item>in both GEMVs, each row's LoRA delta s·xa·Bᵀ added before the single rounding (<see cref="LoraEpilogue"/>;
/// disabled: exactly the sums without adapters);</item>
/// <item>residual add + RMSNorm (x += delta, then normed = w ⊙ x / rms(x));</item>
/// <item>RoPE of q in place and of k straight into its cache page, with v copied beside it.</item>
/// </list>
/// </summary>
internal static class FusedDecodeKernels
{
    public static void GemvThree<T, TE, TAbsmax>(ArrayView<UInt4> x, ArrayView<float> table, GemvSegment<T, TAbsmax> a, GemvSegment<T, TAbsmax> b, GemvSegment<T, TAbsmax> c, FusedShape f,
        LoraBank<T> bank, LoraEpilogue lora)
        where T : unmanaged
        where TE : struct, IElement<T>
        where TAbsmax : struct, IAbsmaxSource
    {
        table = CodeTable.ToShared(table);
        int total = a.Out + b.Out + c.Out;
        for (int row = WarpRows.First, stride = WarpRows.Stride; row < total; row += stride)
        {
            if (row < a.Out)
            {
                Project<T, TE, TAbsmax>(x, table, a, f, row, bank, lora, 0);
            }
            else if (row < a.Out + b.Out)
            {
                Project<T, TE, TAbsmax>(x, table, b, f, row - a.Out, bank, lora, 1);
            }
            else
            {
                Project<T, TE, TAbsmax>(x, table, c, f, row - a.Out - b.Out, bank, lora, 2);
            }
        }
    }

    private static void Project<T, TE, TAbsmax>(ArrayView<UInt4> x, ArrayView<float> table, GemvSegment<T, TAbsmax> w, FusedShape f, int o, LoraBank<T> bank, LoraEpilogue lora, int segment)
        where T : unmanaged
        where TE : struct, IElement<T>
        where TAbsmax : struct, IAbsmaxSource
    {
        var s = new GemvShape(f.Batch, w.Out, f.In, f.BlockShift);
        RowSums sums = Nf4GemvKernels.Row<T, TE, TAbsmax>(w.Packed, w.Absmax, table, x, s, o).WarpSum(f.Batch);
        RowSums deltas = lora.Deltas<T, TE>(bank, segment, o, f.Batch, out int mask);
        if (Warp.LaneIdx == 0)
        {
            sums.Store<T, TE>(w.Y, f.Batch, w.Out, o, w.HasBias != 0 ? w.Bias[o] : 0f, deltas, mask);
        }
    }

    /// <summary>act[b, j] = silu(gate[b, j]) · up[b, j], both rounded to the dtype first, as the plain path stores them.</summary>
    public static void GemvGateUp<T, TE, TAbsmax>(ArrayView<UInt4> x, ArrayView<float> table, GemvSegment<T, TAbsmax> gate, GemvSegment<T, TAbsmax> up, ArrayView<T> act, FusedShape f,
        LoraBank<T> bank, LoraEpilogue lora)
        where T : unmanaged
        where TE : struct, IElement<T>
        where TAbsmax : struct, IAbsmaxSource
    {
        TE e = default;
        table = CodeTable.ToShared(table);
        var s = new GemvShape(f.Batch, gate.Out, f.In, f.BlockShift);
        for (int o = WarpRows.First, stride = WarpRows.Stride; o < gate.Out; o += stride)
        {
            RowSums gs = Nf4GemvKernels.Row<T, TE, TAbsmax>(gate.Packed, gate.Absmax, table, x, s, o).WarpSum(f.Batch);
            RowSums us = Nf4GemvKernels.Row<T, TE, TAbsmax>(up.Packed, up.Absmax, table, x, s, o).WarpSum(f.Batch);
            RowSums gd = lora.Deltas<T, TE>(bank, 0, o, f.Batch, out int gateMask);
            RowSums ud = lora.Deltas<T, TE>(bank, 1, o, f.Batch, out int upMask);
            if (Warp.LaneIdx != 0)
            {
                continue;
            }

            for (int b = 0; b < f.Batch; b++)
            {
                float g0 = gate.HasBias != 0 ? gs.Get(b) + gate.Bias[o] : gs.Get(b), u0 = up.HasBias != 0 ? us.Get(b) + up.Bias[o] : us.Get(b);
                float gv = e.Load(e.Store((gateMask & (1 << b)) != 0 ? g0 + gd.Get(b) : g0));
                float uv = e.Load(e.Store((upMask & (1 << b)) != 0 ? u0 + ud.Get(b) : u0));
                act[((long)b * gate.Out) + o] = e.Store(gv / (1f + MathF.Exp(-gv)) * uv);
            }
        }
    }

    /// <summary>x += delta (rounded once, when <paramref name="hasDelta"/>), then y = w ⊙ x / sqrt(mean(x²) + ε); a warp per row.</summary>
    public static void AddRmsNorm<T, TE>(ArrayView<T> x, ArrayView<T> delta, ArrayView<float> weight, ArrayView<T> y, ArrayView<float> inverseRms, int rows, int dim, float eps, int hasDelta)
        where T : unmanaged
        where TE : struct, IElement<T>
    {
        TE e = default;
        int lanes = Warp.WarpSize, lane = Warp.LaneIdx;
        for (int r = WarpRows.First, stride = WarpRows.Stride; r < rows; r += stride)
        {
            long offset = (long)r * dim;
            for (int j = lane; j < dim && hasDelta != 0; j += lanes)
            {
                x[offset + j] = e.Store(e.Load(x[offset + j]) + e.Load(delta[offset + j])); // each lane re-reads only its own columns below
            }

            RmsNormKernels.Row<T, TE>(x, weight, y, inverseRms, r, dim, eps);
        }
    }

    /// <summary>
    /// RoPE of q [rows, heads, d] in place; k [rows, kvHeads, d] rotated into its cache page; v copied beside it.
    /// </summary>
    public static void RopeAppend<T, TE>(ArrayView<T> q, ArrayView<T> k, ArrayView<T> v, ArrayView<int> positions, ArrayView<float> invFreq,
        ArrayView<T> keys, ArrayView<T> values, ArrayView<int> blockTables, ArrayView<int> rowSequence, PagedAttentionShape s)
        where T : unmanaged
        where TE : struct, IElement<T>
    {
        TE e = default;
        int d = s.HeadDim, half = d / 2, width = s.Heads + s.KvHeads;
        long pairs = (long)s.Rows * width * half, stride = (long)Grid.DimX * Group.DimX;
        for (long p = Grid.GlobalIndex.X; p < pairs; p += stride)
        {
            int i = (int)(p % half);
            long rowHead = p / half;
            int row = (int)(rowHead / width), head = (int)(rowHead % width);
            int position = positions[row];
            float angle = position * invFreq[i];
            float c = MathF.Cos(angle), sn = MathF.Sin(angle);
            if (head < s.Heads)
            {
                long first = ((((long)row * s.Heads) + head) * d) + i;
                float a = e.Load(q[first]), b = e.Load(q[first + half]);
                q[first] = e.Store((a * c) - (b * sn));
                q[first + half] = e.Store((b * c) + (a * sn));
            }
            else
            {
                int kvh = head - s.Heads;
                long source = ((((long)row * s.KvHeads) + kvh) * d) + i;
                long target = (Slot(blockTables, rowSequence[row], position, s) * s.KvHeads + kvh) * d + i;
                float a = e.Load(k[source]), b = e.Load(k[source + half]);
                keys[target] = e.Store((a * c) - (b * sn));
                keys[target + half] = e.Store((b * c) + (a * sn));
                values[target] = v[source];
                values[target + half] = v[source + half];
            }
        }
    }

    private static long Slot(ArrayView<int> blockTables, int sequence, int position, PagedAttentionShape s) =>
        ((long)blockTables[((long)sequence * s.MaxPages) + (position / s.PageTokens)] * s.PageTokens) + (position % s.PageTokens);
}
