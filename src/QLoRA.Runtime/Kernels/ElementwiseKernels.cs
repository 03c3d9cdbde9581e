using ILGPU;

namespace QLoRA.Runtime.Kernels;

/// <summary>Elementwise grid-stride kernels: residual add, bias add, dtype conversion and the embedding gather/scatter.</summary>
internal static class ElementwiseKernels
{
    /// <summary>y = a + b, added in float32.</summary>
    public static void Add<T, TE>(ArrayView<T> a, ArrayView<T> b, ArrayView<T> y, long count)
        where T : unmanaged
        where TE : struct, IElement<T>
    {
        TE e = default;
        for (long i = Grid.GlobalIndex.X; i < count; i += (long)Grid.DimX * Group.DimX)
        {
            y[i] = e.Store(e.Load(a[i]) + e.Load(b[i]));
        }
    }

    /// <summary>y = x converted from one dtype to another (through float32, which holds all three exactly).</summary>
    public static void Convert<TIn, TInE, TOut, TOutE>(ArrayView<TIn> x, ArrayView<TOut> y, long count)
        where TIn : unmanaged
        where TInE : struct, IElement<TIn>
        where TOut : unmanaged
        where TOutE : struct, IElement<TOut>
    {
        TInE input = default;
        TOutE output = default;
        for (long i = Grid.GlobalIndex.X; i < count; i += (long)Grid.DimX * Group.DimX)
        {
            y[i] = output.Store(input.Load(x[i]));
        }
    }

    /// <summary>y[t, :] = table[ids[t], :] (ids are checked on the host before launch).</summary>
    public static void Gather<T>(ArrayView<T> table, ArrayView<int> ids, ArrayView<T> y, int tokens, int dim)
        where T : unmanaged
    {
        long count = (long)tokens * dim;
        for (long i = Grid.GlobalIndex.X; i < count; i += (long)Grid.DimX * Group.DimX)
        {
            int t = (int)(i / dim);
            y[i] = table[((long)ids[t] * dim) + (i % dim)];
        }
    }

    /// <summary>y[r, j] += bias[j] for every row (bias in float32).</summary>
    public static void AddRowVector<T, TE>(ArrayView<T> y, ArrayView<float> bias, long rows, int dim)
        where T : unmanaged
        where TE : struct, IElement<T>
    {
        TE e = default;
        long count = rows * dim;
        for (long i = Grid.GlobalIndex.X; i < count; i += (long)Grid.DimX * Group.DimX)
        {
            y[i] = e.Store(e.Load(y[i]) + bias[i % dim]);
        }
    }

    /// <summary>
    /// Embedding backward without atomics: tokens are grouped by id on the host (order[]: token indices sorted by id,
    /// segments[s]..segments[s+1]: the tokens of unique id ids[s]); each (segment, column) sums its rows in order into
    /// the float32 gradient.
    /// </summary>
    public static void ScatterAddSorted<T, TE>(ArrayView<T> dy, ArrayView<int> order, ArrayView<int> segmentStarts, ArrayView<int> segmentIds, ArrayView<float> dTable, int segments, int dim)
        where T : unmanaged
        where TE : struct, IElement<T>
    {
        TE e = default;
        long count = (long)segments * dim;
        for (long i = Grid.GlobalIndex.X; i < count; i += (long)Grid.DimX * Group.DimX)
        {
            int segment = (int)(i / dim);
            int column = (int)(i % dim);
            float sum = 0f;
            for (int k = segmentStarts[segment]; k < segmentStarts[segment + 1]; k++)
            {
                sum += e.Load(dy[((long)order[k] * dim) + column]);
            }

            dTable[((long)segmentIds[segment] * dim) + column] += sum;
        }
    }
}
