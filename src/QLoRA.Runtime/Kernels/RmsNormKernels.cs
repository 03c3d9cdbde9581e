using ILGPU;

namespace QLoRA.Runtime.Kernels;

/// <summary>
/// RMSNorm as Llama computes it, in float32 whatever the activations' dtype: y = w ⊙ x / sqrt(mean(x²) + ε). A warp
/// owns a row (lanes stride over its columns, so loads are coalesced) and reduces with a butterfly; the forward saves
/// 1/rms per row for the backward. The weight gradient is reduced per column over rows in a fixed order. No atomics:
/// bit-reproducible.
/// </summary>
internal static class RmsNormKernels
{
    /// <summary>x, y: [rows, dim]; weight: [dim]; inverseRms: [rows].</summary>
    public static void Forward<T, TE>(ArrayView<T> x, ArrayView<float> weight, ArrayView<T> y, ArrayView<float> inverseRms, int rows, int dim, float eps)
        where T : unmanaged
        where TE : struct, IElement<T>
    {
        for (int r = WarpRows.First, stride = WarpRows.Stride; r < rows; r += stride)
        {
            Row<T, TE>(x, weight, y, inverseRms, r, dim, eps);
        }
    }

    /// <summary>Row <paramref name="r"/> by the calling warp: lanes stride over the columns, a butterfly sums the squares.</summary>
    public static void Row<T, TE>(ArrayView<T> x, ArrayView<float> weight, ArrayView<T> y, ArrayView<float> inverseRms, long r, int dim, float eps)
        where T : unmanaged
        where TE : struct, IElement<T>
    {
        TE e = default;
        int lanes = Warp.WarpSize, lane = Warp.LaneIdx;
        long offset = r * dim;
        float sum = 0f;
        for (int j = lane; j < dim; j += lanes)
        {
            float v = e.Load(x[offset + j]);
            sum += v * v;
        }

        float inv = 1f / MathF.Sqrt((WarpReduce.Sum(sum) / dim) + eps);
        if (lane == 0)
        {
            inverseRms[r] = inv;
        }

        for (int j = lane; j < dim; j += lanes)
        {
            y[offset + j] = e.Store(weight[j] * (e.Load(x[offset + j]) * inv));
        }
    }

    /// <summary>dx from dy: dx = inv·(w⊙dy) − x·inv³·mean(w⊙dy⊙x).</summary>
    public static void BackwardInput<T, TE>(ArrayView<T> x, ArrayView<float> weight, ArrayView<T> dy, ArrayView<float> inverseRms, ArrayView<T> dx, int rows, int dim)
        where T : unmanaged
        where TE : struct, IElement<T>
    {
        TE e = default;
        int lanes = Warp.WarpSize, lane = Warp.LaneIdx;
        for (int r = WarpRows.First, stride = WarpRows.Stride; r < rows; r += stride)
        {
            long offset = (long)r * dim;
            float inv = inverseRms[r];
            float dot = 0f;
            for (int j = lane; j < dim; j += lanes)
            {
                dot += weight[j] * e.Load(dy[offset + j]) * e.Load(x[offset + j]);
            }

            float k = WarpReduce.Sum(dot) / dim * inv * inv * inv;
            for (int j = lane; j < dim; j += lanes)
            {
                dx[offset + j] = e.Store((inv * weight[j] * e.Load(dy[offset + j])) - (e.Load(x[offset + j]) * k));
            }
        }
    }

    /// <summary>
    /// dw[j] = Σ_r dy[r, j] · x[r, j] · inv[r], summed over rows in order (adjacent lanes: adjacent columns); with
    /// <paramref name="accumulate"/> ≠ 0 the sum is added to dw[j].
    /// </summary>
    public static void BackwardWeight<T, TE>(ArrayView<T> x, ArrayView<T> dy, ArrayView<float> inverseRms, ArrayView<float> dw, int rows, int dim, int accumulate)
        where T : unmanaged
        where TE : struct, IElement<T>
    {
        TE e = default;
        for (int j = Grid.GlobalIndex.X; j < dim; j += Grid.DimX * Group.DimX)
        {
            float sum = 0f;
            for (int r = 0; r < rows; r++)
            {
                long i = ((long)r * dim) + j;
                sum += e.Load(dy[i]) * e.Load(x[i]) * inverseRms[r];
            }

            dw[j] = accumulate != 0 ? dw[j] + sum : sum;
        }
    }
}
