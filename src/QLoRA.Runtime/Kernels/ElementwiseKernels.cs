using ILGPU;

namespace QLoRA.Runtime.Kernels;

/// <summary>Elementwise grid-stride kernels: residual add and embedding gather.</summary>
internal static class ElementwiseKernels
{
    /// <summary>y = a + b.</summary>
    public static void Add(ArrayView<float> a, ArrayView<float> b, ArrayView<float> y, long count)
    {
        for (long i = Grid.GlobalIndex.X; i < count; i += (long)Grid.DimX * Group.DimX)
        {
            y[i] = a[i] + b[i];
        }
    }

    /// <summary>y[t, :] = table[ids[t], :]; ids out of range write NaN rows (checked on the host before launch).</summary>
    public static void Gather(ArrayView<float> table, ArrayView<int> ids, ArrayView<float> y, int tokens, int dim)
    {
        long count = (long)tokens * dim;
        for (long i = Grid.GlobalIndex.X; i < count; i += (long)Grid.DimX * Group.DimX)
        {
            int t = (int)(i / dim);
            y[i] = table[((long)ids[t] * dim) + (i % dim)];
        }
    }

    /// <summary>y[r, j] += bias[j] for every row.</summary>
    public static void AddRowVector(ArrayView<float> y, ArrayView<float> bias, long rows, int dim)
    {
        long count = rows * dim;
        for (long i = Grid.GlobalIndex.X; i < count; i += (long)Grid.DimX * Group.DimX)
        {
            y[i] += bias[i % dim];
        }
    }

    /// <summary>
    /// Embedding backward without atomics: tokens are grouped by id on the host (order[]: token indices sorted by id,
    /// segments[s]..segments[s+1]: the tokens of unique id ids[s]); each (segment, column) sums its rows in order.
    /// </summary>
    public static void ScatterAddSorted(ArrayView<float> dy, ArrayView<int> order, ArrayView<int> segmentStarts, ArrayView<int> segmentIds, ArrayView<float> dTable, int segments, int dim)
    {
        long count = (long)segments * dim;
        for (long i = Grid.GlobalIndex.X; i < count; i += (long)Grid.DimX * Group.DimX)
        {
            int segment = (int)(i / dim);
            int column = (int)(i % dim);
            float sum = 0f;
            for (int k = segmentStarts[segment]; k < segmentStarts[segment + 1]; k++)
            {
                sum += dy[((long)order[k] * dim) + column];
            }

            dTable[((long)segmentIds[segment] * dim) + column] += sum;
        }
    }
}
