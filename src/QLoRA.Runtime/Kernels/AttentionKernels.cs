using ILGPU;

namespace QLoRA.Runtime.Kernels;

/// <summary>Sizes of a packed causal attention call.</summary>
internal readonly record struct AttentionShape(int Tokens, int Heads, int KvHeads, int HeadDim, float Scale, int Window);

/// <summary>
/// Causal attention with grouped-query heads over packed variable-length sequences (each token attends to the
/// tokens of its own sequence up to itself, and with a sliding window only to the last <c>Window</c> of them). Flash-style: online softmax, no tokens×tokens matrix; the forward keeps
/// the log-sum-exp per (token, head) for the backward, which recomputes probabilities. Every reduction runs in a
/// fixed order (deterministic). Layouts: q, o [tokens, heads, d]; k, v [tokens, kvHeads, d]; lse [tokens, heads].
/// Inputs and outputs are of one compute dtype; sums run in float32 in a scratch of the output's shape (the output
/// itself when it is float32), stored rounded once at the end.
/// </summary>
internal static class AttentionKernels
{
    public static void Forward<T, TE>(ArrayView<T> q, ArrayView<T> k, ArrayView<T> v, ArrayView<int> sequenceStart, ArrayView<T> o, ArrayView<float> acc, ArrayView<float> lse, AttentionShape s)
        where T : unmanaged
        where TE : struct, IElement<T>
    {
        TE e8 = default;
        int group = s.Heads / s.KvHeads;
        long rows = (long)s.Tokens * s.Heads;
        for (long row = Grid.GlobalIndex.X; row < rows; row += (long)Grid.DimX * Group.DimX)
        {
            int t = (int)(row / s.Heads);
            int h = (int)(row % s.Heads);
            long qBase = row * s.HeadDim;
            for (int e = 0; e < s.HeadDim; e++)
            {
                acc[qBase + e] = 0f;
            }

            float max = float.NegativeInfinity;
            float sum = 0f;
            for (int j = First(sequenceStart[t], t, s.Window); j <= t; j++)
            {
                long kBase = (((long)j * s.KvHeads) + (h / group)) * s.HeadDim;
                float score = 0f;
                for (int e = 0; e < s.HeadDim; e++)
                {
                    score += e8.Load(q[qBase + e]) * e8.Load(k[kBase + e]);
                }

                score *= s.Scale;
                float newMax = XMax(max, score);
                float correction = MathF.Exp(max - newMax);
                float p = MathF.Exp(score - newMax);
                sum = (sum * correction) + p;
                for (int e = 0; e < s.HeadDim; e++)
                {
                    acc[qBase + e] = (acc[qBase + e] * correction) + (p * e8.Load(v[kBase + e]));
                }

                max = newMax;
            }

            for (int e = 0; e < s.HeadDim; e++)
            {
                o[qBase + e] = e8.Store(acc[qBase + e] / sum);
            }

            lse[row] = max + MathF.Log(sum);
        }
    }

    /// <summary>delta[t, h] = dO·O, then dQ = Σ_j P(dP − delta)·scale·k_j.</summary>
    public static void BackwardQuery<T, TE>(ArrayView<T> q, ArrayView<T> k, ArrayView<T> v, ArrayView<int> sequenceStart, ArrayView<T> o, ArrayView<float> lse, ArrayView<T> dO, ArrayView<float> delta, ArrayView<T> dQ, ArrayView<float> acc, AttentionShape s)
        where T : unmanaged
        where TE : struct, IElement<T>
    {
        TE e8 = default;
        int group = s.Heads / s.KvHeads;
        long rows = (long)s.Tokens * s.Heads;
        for (long row = Grid.GlobalIndex.X; row < rows; row += (long)Grid.DimX * Group.DimX)
        {
            int t = (int)(row / s.Heads);
            int h = (int)(row % s.Heads);
            long qBase = row * s.HeadDim;
            float d = 0f;
            for (int e = 0; e < s.HeadDim; e++)
            {
                d += e8.Load(dO[qBase + e]) * e8.Load(o[qBase + e]);
                acc[qBase + e] = 0f;
            }

            delta[row] = d;
            for (int j = First(sequenceStart[t], t, s.Window); j <= t; j++)
            {
                long kBase = (((long)j * s.KvHeads) + (h / group)) * s.HeadDim;
                float score = 0f, dp = 0f;
                for (int e = 0; e < s.HeadDim; e++)
                {
                    score += e8.Load(q[qBase + e]) * e8.Load(k[kBase + e]);
                    dp += e8.Load(dO[qBase + e]) * e8.Load(v[kBase + e]);
                }

                float p = MathF.Exp((score * s.Scale) - lse[row]);
                float ds = p * (dp - d) * s.Scale;
                for (int e = 0; e < s.HeadDim; e++)
                {
                    acc[qBase + e] += ds * e8.Load(k[kBase + e]);
                }
            }

            for (int e = 0; e < s.HeadDim; e++)
            {
                dQ[qBase + e] = e8.Store(acc[qBase + e]);
            }
        }
    }

    /// <summary>dK_j = Σ_{h in group, t ≥ j} P(dP − delta)·scale·q_t and dV_j = Σ P·dO_t, per key row in order.</summary>
    public static void BackwardKeyValue<T, TE>(ArrayView<T> q, ArrayView<T> k, ArrayView<T> v, ArrayView<int> sequenceEnd, ArrayView<float> lse, ArrayView<T> dO, ArrayView<float> delta, ArrayView<T> dK, ArrayView<T> dV, ArrayView<float> dKAcc, ArrayView<float> dVAcc, AttentionShape s)
        where T : unmanaged
        where TE : struct, IElement<T>
    {
        TE e8 = default;
        int group = s.Heads / s.KvHeads;
        long rows = (long)s.Tokens * s.KvHeads;
        for (long row = Grid.GlobalIndex.X; row < rows; row += (long)Grid.DimX * Group.DimX)
        {
            int j = (int)(row / s.KvHeads);
            int kvh = (int)(row % s.KvHeads);
            long kBase = row * s.HeadDim;
            for (int e = 0; e < s.HeadDim; e++)
            {
                dKAcc[kBase + e] = 0f;
                dVAcc[kBase + e] = 0f;
            }

            for (int h = kvh * group; h < (kvh + 1) * group; h++)
            {
                int last = s.Window > 0 && j + s.Window < sequenceEnd[j] ? j + s.Window : sequenceEnd[j];
                for (int t = j; t < last; t++)
                {
                    long qRow = ((long)t * s.Heads) + h;
                    long qBase = qRow * s.HeadDim;
                    float score = 0f, dp = 0f;
                    for (int e = 0; e < s.HeadDim; e++)
                    {
                        score += e8.Load(q[qBase + e]) * e8.Load(k[kBase + e]);
                        dp += e8.Load(dO[qBase + e]) * e8.Load(v[kBase + e]);
                    }

                    float p = MathF.Exp((score * s.Scale) - lse[qRow]);
                    float ds = p * (dp - delta[qRow]) * s.Scale;
                    for (int e = 0; e < s.HeadDim; e++)
                    {
                        dKAcc[kBase + e] += ds * e8.Load(q[qBase + e]);
                        dVAcc[kBase + e] += p * e8.Load(dO[qBase + e]);
                    }
                }
            }

            for (int e = 0; e < s.HeadDim; e++)
            {
                dK[kBase + e] = e8.Store(dKAcc[kBase + e]);
                dV[kBase + e] = e8.Store(dVAcc[kBase + e]);
            }
        }
    }

    private static float XMax(float a, float b) => a > b ? a : b;

    // With a sliding window w, token t sees keys t − w + 1 … t (as transformers masks q − k ≥ w).
    private static int First(int sequenceStart, int t, int window) => window > 0 && t - window + 1 > sequenceStart ? t - window + 1 : sequenceStart;
}
