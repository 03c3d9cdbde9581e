using System.Buffers;
using System.Numerics.Tensors;

namespace QLoRA.Runtime.Cpu;

/// <summary>Where one attention call's tensors lie in host memory (layouts as <see cref="Ops.Attention"/>).</summary>
internal readonly unsafe struct CpuAttentionOperands(void* q, void* k, void* v, void* o, float* lse, CpuElement element)
{
    public void* Q { get; } = q;

    public void* K { get; } = k;

    public void* V { get; } = v;

    public void* O { get; } = o;

    public float* Lse { get; } = lse;

    public CpuElement Element { get; } = element;
}

/// <summary>
/// Barrier-free CPU schedule of causal grouped-query attention over packed sequences. A task owns one (sequence, kv head)
/// pair: it converts that sequence's keys and values to float32 once, then for each query head of the group and each
/// row computes the row's scores against its visible keys (its sequence up to itself, within the sliding window),
/// an exact softmax over them (one max, no rescaling: the row's scores fit in cache) and the weighted sum of values —
/// SIMD over the head dimension. The backward recomputes each row's probabilities from the saved log-sum-exp and, since
/// the task owns every row of its keys, accumulates dK and dV without atomics or barriers. Every sum runs in a fixed
/// order: results repeat bit for bit, whatever the thread count.
/// </summary>
internal static unsafe class CpuAttention
{
    /// <summary>o and lse for every row.</summary>
    public static void Forward(CpuAttentionOperands x, ReadOnlySpan<int> boundaries, int tokens, int heads, int kvHeads, int d, float scale, int window)
    {
        ForEachSequenceHead(boundaries, kvHeads, (start, length, kvh) =>
        {

            float[] keys = ArrayPool<float>.Shared.Rent(length * d), values = ArrayPool<float>.Shared.Rent(length * d);
            float[] scores = ArrayPool<float>.Shared.Rent(length), row = ArrayPool<float>.Shared.Rent(2 * d);
            try
            {
                LoadHead(x.K, x.Element, start, length, kvh, kvHeads, d, keys);
                LoadHead(x.V, x.Element, start, length, kvh, kvHeads, d, values);
                Span<float> query = row.AsSpan(0, d), output = row.AsSpan(d, d);
                for (int h = kvh * (heads / kvHeads); h < (kvh + 1) * (heads / kvHeads); h++)
                {
                    for (int i = 0; i < length; i++)
                    {
                        long rowIndex = ((long)(start + i) * heads) + h;
                        CpuElements.Load(x.Q, x.Element, rowIndex * d, d, query);
                        int first = First(i, window);
                        Span<float> p = scores.AsSpan(first, i - first + 1);
                        for (int j = first; j <= i; j++)
                        {
                            p[j - first] = TensorPrimitives.Dot(query, keys.AsSpan(j * d, d)) * scale;
                        }

                        float max = TensorPrimitives.Max(p);
                        TensorPrimitives.Subtract(p, max, p);
                        TensorPrimitives.Exp(p, p);
                        float sum = TensorPrimitives.Sum(p);
                        output.Clear();
                        for (int j = first; j <= i; j++)
                        {
                            TensorPrimitives.MultiplyAdd(values.AsSpan(j * d, d), p[j - first], output, output);
                        }

                        TensorPrimitives.Divide(output, sum, output);
                        CpuElements.Store(output, x.O, x.Element, rowIndex * d);
                        x.Lse[rowIndex] = max + MathF.Log(sum);
                    }
                }
            }
            finally
            {
                ArrayPool<float>.Shared.Return(keys);
                ArrayPool<float>.Shared.Return(values);
                ArrayPool<float>.Shared.Return(scores);
                ArrayPool<float>.Shared.Return(row);
            }
        });
    }

    /// <summary>dQ, dK, dV from dO; <paramref name="delta"/> [tokens, heads] receives dO·O per row.</summary>
    public static void Backward(CpuAttentionOperands x, void* dO, void* dQ, void* dK, void* dV, float* delta, ReadOnlySpan<int> boundaries, int tokens, int heads, int kvHeads, int d, float scale, int window)
    {
        ForEachSequenceHead(boundaries, kvHeads, (start, length, kvh) =>
        {

            float[] keys = ArrayPool<float>.Shared.Rent(length * d), values = ArrayPool<float>.Shared.Rent(length * d);
            float[] dKeys = ArrayPool<float>.Shared.Rent(length * d), dValues = ArrayPool<float>.Shared.Rent(length * d);
            float[] scores = ArrayPool<float>.Shared.Rent(length), row = ArrayPool<float>.Shared.Rent(4 * d);
            try
            {
                LoadHead(x.K, x.Element, start, length, kvh, kvHeads, d, keys);
                LoadHead(x.V, x.Element, start, length, kvh, kvHeads, d, values);
                dKeys.AsSpan(0, length * d).Clear();
                dValues.AsSpan(0, length * d).Clear();
                Span<float> query = row.AsSpan(0, d), gradOut = row.AsSpan(d, d), output = row.AsSpan(2 * d, d), gradQuery = row.AsSpan(3 * d, d);
                for (int h = kvh * (heads / kvHeads); h < (kvh + 1) * (heads / kvHeads); h++)
                {
                    for (int i = 0; i < length; i++)
                    {
                        long rowIndex = ((long)(start + i) * heads) + h;
                        CpuElements.Load(x.Q, x.Element, rowIndex * d, d, query);
                        CpuElements.Load(dO, x.Element, rowIndex * d, d, gradOut);
                        CpuElements.Load(x.O, x.Element, rowIndex * d, d, output);
                        float dd = TensorPrimitives.Dot(gradOut, output);
                        delta[rowIndex] = dd;
                        float lse = x.Lse[rowIndex];
                        gradQuery.Clear();
                        for (int j = First(i, window); j <= i; j++)
                        {
                            Span<float> key = keys.AsSpan(j * d, d);
                            float p = MathF.Exp((TensorPrimitives.Dot(query, key) * scale) - lse);
                            float ds = p * (TensorPrimitives.Dot(gradOut, values.AsSpan(j * d, d)) - dd) * scale;
                            TensorPrimitives.MultiplyAdd(key, ds, gradQuery, gradQuery);
                            TensorPrimitives.MultiplyAdd(query, ds, dKeys.AsSpan(j * d, d), dKeys.AsSpan(j * d, d));
                            TensorPrimitives.MultiplyAdd(gradOut, p, dValues.AsSpan(j * d, d), dValues.AsSpan(j * d, d));
                        }

                        CpuElements.Store(gradQuery, dQ, x.Element, rowIndex * d);
                    }
                }

                for (int j = 0; j < length; j++)
                {
                    long keyRow = (((long)(start + j) * kvHeads) + kvh) * d;
                    CpuElements.Store(dKeys.AsSpan(j * d, d), dK, x.Element, keyRow);
                    CpuElements.Store(dValues.AsSpan(j * d, d), dV, x.Element, keyRow);
                }
            }
            finally
            {
                ArrayPool<float>.Shared.Return(keys);
                ArrayPool<float>.Shared.Return(values);
                ArrayPool<float>.Shared.Return(dKeys);
                ArrayPool<float>.Shared.Return(dValues);
                ArrayPool<float>.Shared.Return(scores);
                ArrayPool<float>.Shared.Return(row);
            }
        });
    }

    // One task per (sequence, kv head) with tokens; the task owns every row of its keys and values.
    private static void ForEachSequenceHead(ReadOnlySpan<int> boundaries, int kvHeads, Action<int, int, int> body)
    {
        int[] bounds = boundaries.ToArray();
        Parallel.For(0, (bounds.Length - 1) * kvHeads, task =>
        {
            int sequence = task / kvHeads, start = bounds[sequence], length = bounds[sequence + 1] - start;
            if (length > 0)
            {
                body(start, length, task % kvHeads);
            }
        });
    }

    // With a sliding window w, row i (of its sequence) sees keys i − w + 1 … i, as transformers masks q − k ≥ w.
    private static int First(int i, int window) => window > 0 ? Math.Max(0, i - window + 1) : 0;

    private static void LoadHead(void* data, CpuElement element, int start, int length, int kvh, int kvHeads, int d, float[] destination)
    {
        for (int j = 0; j < length; j++)
        {
            CpuElements.Load(data, element, (((long)(start + j) * kvHeads) + kvh) * d, d, destination.AsSpan(j * d, d));
        }
    }
}
