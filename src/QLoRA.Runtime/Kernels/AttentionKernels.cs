using ILGPU;

namespace QLoRA.Runtime.Kernels;

/// <summary>Sizes of a packed causal attention call.</summary>
internal readonly record struct AttentionShape(int Tokens, int Heads, int KvHeads, int HeadDim, float Scale, int Window);

/// <summary>
/// Flash-style causal attention with grouped-query heads over packed variable-length sequences: each token attends to
/// the tokens of its own sequence up to itself (with a sliding window, only to the last <c>Window</c> of them). A
/// group owns a block of G consecutive rows of one head (one row per thread, its vectors in registers/local memory)
/// and streams the other side through shared memory in tiles of G rows, so every key/value (or query/gradient) row is
/// read once per block instead of once per row; scores exist only for the current tile (no tokens×tokens matrix).
/// The forward keeps an online softmax per row and the log-sum-exp for the backward, which recomputes probabilities.
/// Every sum runs in a fixed order: results are bit-reproducible. Layouts: q, o [tokens, heads, d]; k, v
/// [tokens, kvHeads, d]; lse, delta [tokens, heads]. Elements of a compute dtype, arithmetic in float32.
/// </summary>
internal static class AttentionKernels
{
    /// <summary>Largest head dimension (per-thread vectors live in local memory of this size).</summary>
    public const int MaxHeadDim = 256;

    /// <summary>Largest group (tile) size: one score per tile row is kept per thread.</summary>
    public const int MaxTile = 64;

    /// <summary>Shared memory (floats) of the forward and the query-gradient kernels: K and V tiles.</summary>
    public static int KeyValueTileFloats(int tile, int headDim) => 2 * tile * headDim;

    /// <summary>Shared memory (floats) of the key/value-gradient kernel: Q and dO tiles, their lse and delta.</summary>
    public static int QueryTileFloats(int tile, int headDim) => (2 * tile * headDim) + (2 * tile);

    public static void Forward<T, TE>(ArrayView<T> q, ArrayView<T> k, ArrayView<T> v, ArrayView<int> sequenceStart, ArrayView<T> o, ArrayView<float> lse, AttentionShape s)
        where T : unmanaged
        where TE : struct, IElement<T>
    {
        TE e8 = default;
        int tile = Group.DimX, lane = Group.IdxX, d = s.HeadDim, group = s.Heads / s.KvHeads;
        ArrayView<float> shared = SharedMemory.GetDynamic<float>();
        ArrayView<float> sK = shared.SubView(0, tile * d), sV = shared.SubView(tile * d, tile * d);
        ArrayView<float> qRow = LocalMemory.Allocate<float>(MaxHeadDim), acc = LocalMemory.Allocate<float>(MaxHeadDim);
        ArrayView<float> scores = LocalMemory.Allocate<float>(MaxTile);
        int blocks = (s.Tokens + tile - 1) / tile;
        for (int item = Grid.IdxX; item < blocks * s.Heads; item += Grid.DimX)
        {
            var block = new QueryBlock(item, tile, lane, s, sequenceStart);
            int block0 = block.Start, h = block.Head, kvh = h / group, t = block.Token, first = block.First;
            bool valid = block.Valid;
            long rowBase = (((long)t * s.Heads) + h) * d;
            for (int e = 0; e < d; e++)
            {
                qRow[e] = valid ? e8.Load(q[rowBase + e]) : 0f;
                acc[e] = 0f;
            }

            float max = float.NegativeInfinity, sum = 0f;
            int lo = First(sequenceStart[block0], block0, s.Window), hi = XMin(block0 + tile, s.Tokens) - 1;
            for (int kt = lo; kt <= hi; kt += tile)
            {
                Group.Barrier();
                LoadRows<T, TE>(k, v, sK, sV, kt + lane <= hi ? kt + lane : -1, kvh, s.KvHeads, d, lane);
                Group.Barrier();
                if (!valid)
                {
                    continue;
                }

                float tileMax = float.NegativeInfinity;
                for (int jj = 0; jj < tile; jj++)
                {
                    int j = kt + jj;
                    float score = float.NegativeInfinity;
                    if (j >= first && j <= t)
                    {
                        score = 0f;
                        for (int e = 0; e < d; e++)
                        {
                            score += qRow[e] * sK[(jj * d) + e];
                        }

                        score *= s.Scale;
                    }

                    scores[jj] = score;
                    tileMax = XMax(tileMax, score);
                }

                if (tileMax == float.NegativeInfinity)
                {
                    continue; // no key of this tile is visible to this row
                }

                float newMax = XMax(max, tileMax);
                float correction = MathF.Exp(max - newMax);
                float tileSum = 0f;
                for (int jj = 0; jj < tile; jj++)
                {
                    float p = scores[jj] == float.NegativeInfinity ? 0f : MathF.Exp(scores[jj] - newMax);
                    scores[jj] = p;
                    tileSum += p;
                }

                for (int e = 0; e < d; e++)
                {
                    float a = acc[e] * correction;
                    for (int jj = 0; jj < tile; jj++)
                    {
                        a += scores[jj] * sV[(jj * d) + e];
                    }

                    acc[e] = a;
                }

                sum = (sum * correction) + tileSum;
                max = newMax;
            }

            if (valid)
            {
                for (int e = 0; e < d; e++)
                {
                    o[rowBase + e] = e8.Store(acc[e] / sum);
                }

                lse[((long)t * s.Heads) + h] = max + MathF.Log(sum);
            }
        }
    }

    /// <summary>delta = dO·O per row, then dQ = Σ_j P(dP − delta)·scale·k_j over key tiles in shared memory.</summary>
    public static void BackwardQuery<T, TE>(ArrayView<T> q, ArrayView<T> k, ArrayView<T> v, ArrayView<int> sequenceStart, ArrayView<T> o, ArrayView<float> lse, ArrayView<T> dO, ArrayView<float> delta, ArrayView<T> dQ, AttentionShape s)
        where T : unmanaged
        where TE : struct, IElement<T>
    {
        TE e8 = default;
        int tile = Group.DimX, lane = Group.IdxX, d = s.HeadDim, group = s.Heads / s.KvHeads;
        ArrayView<float> shared = SharedMemory.GetDynamic<float>();
        ArrayView<float> sK = shared.SubView(0, tile * d), sV = shared.SubView(tile * d, tile * d);
        ArrayView<float> qRow = LocalMemory.Allocate<float>(MaxHeadDim), dORow = LocalMemory.Allocate<float>(MaxHeadDim), acc = LocalMemory.Allocate<float>(MaxHeadDim);
        int blocks = (s.Tokens + tile - 1) / tile;
        for (int item = Grid.IdxX; item < blocks * s.Heads; item += Grid.DimX)
        {
            var block = new QueryBlock(item, tile, lane, s, sequenceStart);
            int block0 = block.Start, h = block.Head, kvh = h / group, t = block.Token, first = block.First;
            bool valid = block.Valid;
            long row = ((long)t * s.Heads) + h, rowBase = row * d;
            float dd = 0f, rowLse = valid ? lse[row] : 0f;
            for (int e = 0; e < d; e++)
            {
                qRow[e] = valid ? e8.Load(q[rowBase + e]) : 0f;
                dORow[e] = valid ? e8.Load(dO[rowBase + e]) : 0f;
                dd += valid ? dORow[e] * e8.Load(o[rowBase + e]) : 0f;
                acc[e] = 0f;
            }

            if (valid)
            {
                delta[row] = dd;
            }

            int lo = First(sequenceStart[block0], block0, s.Window), hi = XMin(block0 + tile, s.Tokens) - 1;
            for (int kt = lo; kt <= hi; kt += tile)
            {
                Group.Barrier();
                LoadRows<T, TE>(k, v, sK, sV, kt + lane <= hi ? kt + lane : -1, kvh, s.KvHeads, d, lane);
                Group.Barrier();
                for (int jj = 0; valid && jj < tile; jj++)
                {
                    int j = kt + jj;
                    if (j < first || j > t)
                    {
                        continue;
                    }

                    float score = 0f, dp = 0f;
                    for (int e = 0; e < d; e++)
                    {
                        score += qRow[e] * sK[(jj * d) + e];
                        dp += dORow[e] * sV[(jj * d) + e];
                    }

                    float p = MathF.Exp((score * s.Scale) - rowLse);
                    float ds = p * (dp - dd) * s.Scale;
                    for (int e = 0; e < d; e++)
                    {
                        acc[e] += ds * sK[(jj * d) + e];
                    }
                }
            }

            for (int e = 0; valid && e < d; e++)
            {
                dQ[rowBase + e] = e8.Store(acc[e]);
            }
        }
    }

    /// <summary>
    /// dK_j = Σ_{h in group, t ≥ j} P(dP − delta)·scale·q_t and dV_j = Σ P·dO_t: each thread owns a key row, query
    /// rows stream through shared memory head by head, summed in order.
    /// </summary>
    public static void BackwardKeyValue<T, TE>(ArrayView<T> q, ArrayView<T> k, ArrayView<T> v, ArrayView<int> sequenceEnd, ArrayView<float> lse, ArrayView<T> dO, ArrayView<float> delta, ArrayView<T> dK, ArrayView<T> dV, AttentionShape s)
        where T : unmanaged
        where TE : struct, IElement<T>
    {
        TE e8 = default;
        int tile = Group.DimX, lane = Group.IdxX, d = s.HeadDim, group = s.Heads / s.KvHeads;
        ArrayView<float> shared = SharedMemory.GetDynamic<float>();
        ArrayView<float> sQ = shared.SubView(0, tile * d), sDO = shared.SubView(tile * d, tile * d);
        ArrayView<float> sLse = shared.SubView(2 * tile * d, tile), sDelta = shared.SubView((2 * tile * d) + tile, tile);
        ArrayView<float> kRow = LocalMemory.Allocate<float>(MaxHeadDim), vRow = LocalMemory.Allocate<float>(MaxHeadDim);
        ArrayView<float> dKAcc = LocalMemory.Allocate<float>(MaxHeadDim), dVAcc = LocalMemory.Allocate<float>(MaxHeadDim);
        int blocks = (s.Tokens + tile - 1) / tile;
        for (int item = Grid.IdxX; item < blocks * s.KvHeads; item += Grid.DimX)
        {
            int block0 = (item / s.KvHeads) * tile, kvh = item % s.KvHeads;
            int j = block0 + lane;
            bool valid = j < s.Tokens;
            int end = valid ? End(sequenceEnd[j], j, s.Window) : 0;
            long rowBase = (((long)j * s.KvHeads) + kvh) * d;
            for (int e = 0; e < d; e++)
            {
                kRow[e] = valid ? e8.Load(k[rowBase + e]) : 0f;
                vRow[e] = valid ? e8.Load(v[rowBase + e]) : 0f;
                dKAcc[e] = 0f;
                dVAcc[e] = 0f;
            }

            int lastKey = XMin(block0 + tile, s.Tokens) - 1;
            int hi = End(sequenceEnd[lastKey], lastKey, s.Window) - 1;
            for (int h = kvh * group; h < (kvh + 1) * group; h++)
            {
                for (int qt = block0; qt <= hi; qt += tile)
                {
                    Group.Barrier();
                    int t = qt + lane;
                    long qRow = ((long)t * s.Heads) + h;
                    for (int e = 0; e < d; e++)
                    {
                        sQ[(lane * d) + e] = t <= hi ? e8.Load(q[(qRow * d) + e]) : 0f;
                        sDO[(lane * d) + e] = t <= hi ? e8.Load(dO[(qRow * d) + e]) : 0f;
                    }

                    sLse[lane] = t <= hi ? lse[qRow] : 0f;
                    sDelta[lane] = t <= hi ? delta[qRow] : 0f;
                    Group.Barrier();
                    for (int tt = 0; valid && tt < tile; tt++)
                    {
                        int query = qt + tt;
                        if (query < j || query >= end)
                        {
                            continue;
                        }

                        float score = 0f, dp = 0f;
                        for (int e = 0; e < d; e++)
                        {
                            score += sQ[(tt * d) + e] * kRow[e];
                            dp += sDO[(tt * d) + e] * vRow[e];
                        }

                        float p = MathF.Exp((score * s.Scale) - sLse[tt]);
                        float ds = p * (dp - sDelta[tt]) * s.Scale;
                        for (int e = 0; e < d; e++)
                        {
                            dKAcc[e] += ds * sQ[(tt * d) + e];
                            dVAcc[e] += p * sDO[(tt * d) + e];
                        }
                    }
                }
            }

            for (int e = 0; valid && e < d; e++)
            {
                dK[rowBase + e] = e8.Store(dKAcc[e]);
                dV[rowBase + e] = e8.Store(dVAcc[e]);
            }
        }
    }

    // Thread `lane` copies key/value row `j` (or zeros when j < 0) of kv head kvh into its tile slot, as float32.
    private static void LoadRows<T, TE>(ArrayView<T> k, ArrayView<T> v, ArrayView<float> sK, ArrayView<float> sV, int j, int kvh, int kvHeads, int d, int lane)
        where T : unmanaged
        where TE : struct, IElement<T>
    {
        TE e8 = default;
        long source = (((long)j * kvHeads) + kvh) * d;
        for (int e = 0; e < d; e++)
        {
            sK[(lane * d) + e] = j >= 0 ? e8.Load(k[source + e]) : 0f;
            sV[(lane * d) + e] = j >= 0 ? e8.Load(v[source + e]) : 0f;
        }
    }

    /// <summary>Work item <c>item</c> of the query-row kernels: a block of G rows of one head, and this thread's row.</summary>
    private readonly struct QueryBlock
    {
        public QueryBlock(int item, int tile, int lane, AttentionShape s, ArrayView<int> sequenceStart)
        {
            Start = (item / s.Heads) * tile;
            Head = item % s.Heads;
            Token = Start + lane;
            Valid = Token < s.Tokens;
            First = Valid ? AttentionKernels.First(sequenceStart[Token], Token, s.Window) : 0;
        }

        public int Start { get; }

        public int Head { get; }

        public int Token { get; }

        public bool Valid { get; }

        /// <summary>The first key this row sees.</summary>
        public int First { get; }
    }

    private static float XMax(float a, float b) => a > b ? a : b;

    private static int XMin(int a, int b) => a < b ? a : b;

    // With a sliding window w, token t sees keys t − w + 1 … t (as transformers masks q − k ≥ w).
    private static int First(int sequenceStart, int t, int window) => window > 0 && t - window + 1 > sequenceStart ? t - window + 1 : sequenceStart;

    // Queries that see key j: j … End − 1.
    private static int End(int sequenceEnd, int j, int window) => window > 0 && j + window < sequenceEnd ? j + window : sequenceEnd;
}
