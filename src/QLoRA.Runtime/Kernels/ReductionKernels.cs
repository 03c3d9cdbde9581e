using ILGPU;

namespace QLoRA.Runtime.Kernels;

/// <summary>Reductions whose partial results the host finishes in double (one small read per optimizer step).</summary>
internal static class ReductionKernels
{
    /// <summary>
    /// partials[p] = Σ x[i]² over i ≡ p (mod lanes), each lane summed in index order: a fixed partition, so the sum is
    /// the same whatever grid runs it. Lanes are grid-strided.
    /// </summary>
    public static void SumOfSquares(ArrayView<float> x, ArrayView<float> partials, long count, int lanes)
    {
        for (int p = Grid.GlobalIndex.X; p < lanes; p += Grid.DimX * Group.DimX)
        {
            float sum = 0f;
            for (long i = p; i < count; i += lanes)
            {
                float v = x[i];
                sum += v * v;
            }

            partials[p] = sum;
        }
    }
}
