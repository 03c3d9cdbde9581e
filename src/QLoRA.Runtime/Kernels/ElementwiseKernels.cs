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
}
