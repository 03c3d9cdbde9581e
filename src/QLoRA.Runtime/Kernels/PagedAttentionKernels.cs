using ILGPU;

namespace QLoRA.Runtime.Kernels;

/// <summary>Sizes of a paged attention call: query rows, heads, the block tables' stride and the pool's page size.</summary>
internal readonly record struct PagedAttentionShape(int Rows, int Heads, int KvHeads, int HeadDim, float Scale, int Window, int PageTokens, int MaxPages);

/// <summary>
/// Attention of new query rows against a paged KV cache. Each query row r belongs to a sequence (rowSequence[r]) and
/// sits at an absolute position (rowPosition[r]); it sees that sequence's keys 0…position (the last <c>Window</c> of them
/// with a sliding window), which the cache already holds — the rows' own keys are written first, so one kernel serves
/// decode (one row per sequence), multi-token decode and chunked prefill (many rows against a cached prefix).
/// Flash-decoding inside a group: a group owns one (row, head); its warps split the key axis (warp w takes keys
/// first+w, first+w+W, …), each keeping an online softmax with the head vector spread over its lanes (scores by a
/// warp butterfly); the warps' partial (max, sum, accumulator) are then combined through shared memory. Every sum has a
/// fixed order: bit-reproducible, and a row's result does not depend on the other rows of the call.
/// Layouts: q, o [rows, heads, d]; keys/values [pages·pageTokens, kvHeads, d]; blockTables [sequences, maxPages].
/// </summary>
internal static class PagedAttentionKernels
{
    /// <summary>Shared floats per group: per warp its max, sum and d-float accumulator.</summary>
    public static int SharedFloats(int warps, int headDim) => warps * (headDim + 2);

    public static void Attend<T, TE>(ArrayView<T> q, ArrayView<T> keys, ArrayView<T> values, ArrayView<int> blockTables, ArrayView<int> rowSequence, ArrayView<int> rowPosition, ArrayView<T> o, PagedAttentionShape s)
        where T : unmanaged
        where TE : struct, IElement<T>
    {
        TE e8 = default;
        int d = s.HeadDim, ws = Warp.WarpSize, lane = Warp.LaneIdx, warp = Group.IdxX / ws, warps = Group.DimX / ws;
        int perLane = (d + ws - 1) / ws;
        ArrayView<float> shared = SharedMemory.GetDynamic<float>();
        ArrayView<float> sMax = shared.SubView(0, warps), sSum = shared.SubView(warps, warps), sAcc = shared.SubView(2 * warps, warps * d);
        ArrayView<float> qv = LocalMemory.Allocate<float>(AttentionKernels.MaxHeadDim), acc = LocalMemory.Allocate<float>(AttentionKernels.MaxHeadDim);
        for (int item = Grid.IdxX; item < s.Rows * s.Heads; item += Grid.DimX)
        {
            int row = item / s.Heads, h = item - (row * s.Heads), kvh = h / (s.Heads / s.KvHeads);
            int sequence = rowSequence[row], position = rowPosition[row];
            int first = s.Window > 0 && position - s.Window + 1 > 0 ? position - s.Window + 1 : 0;
            long qBase = (((long)row * s.Heads) + h) * d;
            for (int i = 0; i < perLane; i++)
            {
                int e = lane + (i * ws);
                qv[i] = e < d ? e8.Load(q[qBase + e]) : 0f;
                acc[i] = 0f;
            }

            float max = float.NegativeInfinity, sum = 0f;
            for (int j = first + warp; j <= position; j += warps)
            {
                int page = blockTables[((long)sequence * s.MaxPages) + (j / s.PageTokens)];
                long kBase = ((((long)page * s.PageTokens) + (j % s.PageTokens)) * s.KvHeads + kvh) * d;
                float partial = 0f;
                for (int i = 0; i < perLane; i++)
                {
                    int e = lane + (i * ws);
                    partial += e < d ? qv[i] * e8.Load(keys[kBase + e]) : 0f;
                }

                float score = WarpReduce.Sum(partial) * s.Scale;
                float newMax = score > max ? score : max;
                float correction = MathF.Exp(max - newMax), p = MathF.Exp(score - newMax);
                sum = (sum * correction) + p;
                for (int i = 0; i < perLane; i++)
                {
                    int e = lane + (i * ws);
                    acc[i] = (acc[i] * correction) + (e < d ? p * e8.Load(values[kBase + e]) : 0f);
                }

                max = newMax;
            }

            for (int i = 0; i < perLane; i++)
            {
                int e = lane + (i * ws);
                if (e < d)
                {
                    sAcc[(warp * d) + e] = acc[i];
                }
            }

            if (lane == 0)
            {
                sMax[warp] = max;
                sSum[warp] = sum;
            }

            Group.Barrier();
            for (int e = Group.IdxX; e < d; e += Group.DimX)
            {
                float m = float.NegativeInfinity;
                for (int w = 0; w < warps; w++)
                {
                    m = sMax[w] > m ? sMax[w] : m;
                }

                float numerator = 0f, denominator = 0f;
                for (int w = 0; w < warps; w++)
                {
                    if (sMax[w] != float.NegativeInfinity)
                    {
                        float weight = MathF.Exp(sMax[w] - m);
                        numerator += weight * sAcc[(w * d) + e];
                        denominator += weight * sSum[w];
                    }
                }

                o[qBase + e] = e8.Store(numerator / denominator);
            }

            Group.Barrier();
        }
    }

    /// <summary>Writes rows' keys and values [rows, kvHeads, d] into their sequences' pages at their positions.</summary>
    public static void Write<T>(ArrayView<T> k, ArrayView<T> v, ArrayView<T> keys, ArrayView<T> values, ArrayView<int> blockTables, ArrayView<int> rowSequence, ArrayView<int> rowPosition, PagedAttentionShape s)
        where T : unmanaged
    {
        long rowElements = (long)s.KvHeads * s.HeadDim, total = s.Rows * rowElements;
        for (long i = Grid.GlobalIndex.X; i < total; i += (long)Grid.DimX * Group.DimX)
        {
            int row = (int)(i / rowElements);
            long within = i - (row * rowElements);
            int position = rowPosition[row];
            int page = blockTables[((long)rowSequence[row] * s.MaxPages) + (position / s.PageTokens)];
            long target = ((((long)page * s.PageTokens) + (position % s.PageTokens)) * rowElements) + within;
            keys[target] = k[i];
            values[target] = v[i];
        }
    }
}
