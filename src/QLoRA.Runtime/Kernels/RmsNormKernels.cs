using ILGPU;

namespace QLoRA.Runtime.Kernels;

/// <summary>
/// RMSNorm as Llama computes it, in float32 whatever the activations' dtype: y = w ⊙ x / sqrt(mean(x²) + ε). Forward saves 1/rms per row for the
/// backward. Rows are spread over threads grid-stride; the weight gradient is reduced per column over rows in a fixed
/// order (deterministic, no atomics).
/// </summary>
internal static class RmsNormKernels
{
    /// <summary>x, y: [rows, dim]; weight: [dim]; inverseRms: [rows].</summary>
    public static void Forward<T, TE>(ArrayView<T> x, ArrayView<float> weight, ArrayView<T> y, ArrayView<float> inverseRms, int rows, int dim, float eps)
        where T : unmanaged
        where TE : struct, IElement<T>
    {
        TE e = default;
        for (int r = Grid.GlobalIndex.X; r < rows; r += Grid.DimX * Group.DimX)
        {
            long offset = (long)r * dim;
            float sum = 0f;
            for (int j = 0; j < dim; j++)
            {
                float v = e.Load(x[offset + j]);
                sum += v * v;
            }

            float inv = 1f / MathF.Sqrt((sum / dim) + eps);
            inverseRms[r] = inv;
            for (int j = 0; j < dim; j++)
            {
                y[offset + j] = e.Store(weight[j] * (e.Load(x[offset + j]) * inv));
            }
        }
    }

    /// <summary>dx from dy: dx = inv·(w⊙dy) − x·inv³·mean(w⊙dy⊙x).</summary>
    public static void BackwardInput<T, TE>(ArrayView<T> x, ArrayView<float> weight, ArrayView<T> dy, ArrayView<float> inverseRms, ArrayView<T> dx, int rows, int dim)
        where T : unmanaged
        where TE : struct, IElement<T>
    {
        TE e = default;
        for (int r = Grid.GlobalIndex.X; r < rows; r += Grid.DimX * Group.DimX)
        {
            long offset = (long)r * dim;
            float inv = inverseRms[r];
            float dot = 0f;
            for (int j = 0; j < dim; j++)
            {
                dot += weight[j] * e.Load(dy[offset + j]) * e.Load(x[offset + j]);
            }

            float k = dot / dim * inv * inv * inv;
            for (int j = 0; j < dim; j++)
            {
                dx[offset + j] = e.Store((inv * weight[j] * e.Load(dy[offset + j])) - (e.Load(x[offset + j]) * k));
            }
        }
    }

    /// <summary>dw[j] = Σ_r dy[r, j] · x[r, j] · inv[r], summed over rows in order.</summary>
    public static void BackwardWeight<T, TE>(ArrayView<T> x, ArrayView<T> dy, ArrayView<float> inverseRms, ArrayView<float> dw, int rows, int dim)
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

            dw[j] = sum;
        }
    }
}
