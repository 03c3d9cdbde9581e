namespace QLoRA.Runtime.Tests;

/// <summary>y = x·Wᵀ in float64, written plainly, with Σ|x·w| per element (what a float32 sum's error bound scales with).</summary>
public static class Float64Product
{
    /// <param name="x">[rows, in] row-major.</param>
    /// <param name="w">[out, in] row-major.</param>
    /// <returns>Sum and magnitude, each [rows, out] row-major.</returns>
    public static (double[] Sum, double[] Magnitude) TimesTransposed(float[] x, float[] w, int rows, int outFeatures, int inFeatures)
    {
        var sum = new double[rows * outFeatures];
        var magnitude = new double[rows * outFeatures];
        for (int b = 0; b < rows; b++)
        {
            for (int o = 0; o < outFeatures; o++)
            {
                for (int i = 0; i < inFeatures; i++)
                {
                    double p = (double)x[(b * inFeatures) + i] * w[(o * inFeatures) + i];
                    sum[(b * outFeatures) + o] += p;
                    magnitude[(b * outFeatures) + o] += Math.Abs(p);
                }
            }
        }

        return (sum, magnitude);
    }
}
