using ILGPU;

namespace QLoRA.Runtime.Kernels;

/// <summary>Sizes of a packed causal attention call.</summary>
internal readonly record struct AttentionShape(int Tokens, int Heads, int KvHeads, int HeadDim, float Scale, int Window);

/// <summary>
/// Causal attention with grouped-query heads over packed variable-length sequences (each token attends to the
/// tokens of its own sequence up to itself, and with a sliding window only to the last <c>Window</c> of them). Flash-style: online softmax, no tokens×tokens matrix; the forward keeps
/// the log-sum-exp per (token, head) for the backward, which recomputes probabilities. Every reduction runs in a
/// fixed order (deterministic). Layouts: q, o [tokens, heads, d]; k, v [tokens, kvHeads, d]; lse [tokens, heads].
/// </summary>
internal static class AttentionKernels
{
    public static void Forward(ArrayView<float> q, ArrayView<float> k, ArrayView<float> v, ArrayView<int> sequenceStart, ArrayView<float> o, ArrayView<float> lse, AttentionShape s)
    {
        int group = s.Heads / s.KvHeads;
        long rows = (long)s.Tokens * s.Heads;
        for (long row = Grid.GlobalIndex.X; row < rows; row += (long)Grid.DimX * Group.DimX)
        {
            int t = (int)(row / s.Heads);
            int h = (int)(row % s.Heads);
            long qBase = row * s.HeadDim;
            for (int e = 0; e < s.HeadDim; e++)
            {
                o[qBase + e] = 0f;
            }

            float max = float.NegativeInfinity;
            float sum = 0f;
            for (int j = First(sequenceStart[t], t, s.Window); j <= t; j++)
            {
                long kBase = (((long)j * s.KvHeads) + (h / group)) * s.HeadDim;
                float score = 0f;
                for (int e = 0; e < s.HeadDim; e++)
                {
                    score += q[qBase + e] * k[kBase + e];
                }

                score *= s.Scale;
                float newMax = XMax(max, score);
                float correction = MathF.Exp(max - newMax);
                float p = MathF.Exp(score - newMax);
                sum = (sum * correction) + p;
                for (int e = 0; e < s.HeadDim; e++)
                {
                    o[qBase + e] = (o[qBase + e] * correction) + (p * v[kBase + e]);
                }

                max = newMax;
            }

            for (int e = 0; e < s.HeadDim; e++)
            {
                o[qBase + e] /= sum;
            }

            lse[row] = max + MathF.Log(sum);
        }
    }

    /// <summary>delta[t, h] = dO·O, then dQ = Σ_j P(dP − delta)·scale·k_j.</summary>
    public static void BackwardQuery(ArrayView<float> q, ArrayView<float> k, ArrayView<float> v, ArrayView<int> sequenceStart, ArrayView<float> o, ArrayView<float> lse, ArrayView<float> dO, ArrayView<float> delta, ArrayView<float> dQ, AttentionShape s)
    {
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
                d += dO[qBase + e] * o[qBase + e];
                dQ[qBase + e] = 0f;
            }

            delta[row] = d;
            for (int j = First(sequenceStart[t], t, s.Window); j <= t; j++)
            {
                long kBase = (((long)j * s.KvHeads) + (h / group)) * s.HeadDim;
                float score = 0f, dp = 0f;
                for (int e = 0; e < s.HeadDim; e++)
                {
                    score += q[qBase + e] * k[kBase + e];
                    dp += dO[qBase + e] * v[kBase + e];
                }

                float p = MathF.Exp((score * s.Scale) - lse[row]);
                float ds = p * (dp - d) * s.Scale;
                for (int e = 0; e < s.HeadDim; e++)
                {
                    dQ[qBase + e] += ds * k[kBase + e];
                }
            }
        }
    }

    /// <summary>dK_j = Σ_{h in group, t ≥ j} P(dP − delta)·scale·q_t and dV_j = Σ P·dO_t, per key row in order.</summary>
    public static void BackwardKeyValue(ArrayView<float> q, ArrayView<float> k, ArrayView<float> v, ArrayView<int> sequenceEnd, ArrayView<float> lse, ArrayView<float> dO, ArrayView<float> delta, ArrayView<float> dK, ArrayView<float> dV, AttentionShape s)
    {
        int group = s.Heads / s.KvHeads;
        long rows = (long)s.Tokens * s.KvHeads;
        for (long row = Grid.GlobalIndex.X; row < rows; row += (long)Grid.DimX * Group.DimX)
        {
            int j = (int)(row / s.KvHeads);
            int kvh = (int)(row % s.KvHeads);
            long kBase = row * s.HeadDim;
            for (int e = 0; e < s.HeadDim; e++)
            {
                dK[kBase + e] = 0f;
                dV[kBase + e] = 0f;
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
                        score += q[qBase + e] * k[kBase + e];
                        dp += dO[qBase + e] * v[kBase + e];
                    }

                    float p = MathF.Exp((score * s.Scale) - lse[qRow]);
                    float ds = p * (dp - delta[qRow]) * s.Scale;
                    for (int e = 0; e < s.HeadDim; e++)
                    {
                        dK[kBase + e] += ds * q[qBase + e];
                        dV[kBase + e] += p * dO[qBase + e];
                    }
                }
            }
        }
    }

    private static float XMax(float a, float b) => a > b ? a : b;

    // With a sliding window w, token t sees keys t − w + 1 … t (as transformers masks q − k ≥ w).
    private static int First(int sequenceStart, int t, int window) => window > 0 && t - window + 1 > sequenceStart ? t - window + 1 : sequenceStart;
}
