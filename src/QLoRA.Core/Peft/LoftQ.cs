using QLoRA.Core.Quantization;

namespace QLoRA.Core.Peft;

/// <summary>
/// LoftQ initialization (Li et al., 2023; PEFT's <c>loftq_init</c>): instead of quantizing W and starting LoRA at
/// B = 0, alternate Q = quantize(W − s·B·A) and the best rank-r approximation s·B·A of W − Q, so that Q + s·B·A is
/// closer to W than Q alone. A = R and B = L / s for the rank-r factors L·R (PEFT stores B = L, i.e. assumes s = 1;
/// dividing by s keeps Q + s·B·A the approximation whatever alpha is).
/// </summary>
public static class LoftQ
{
    /// <summary>The adjusted base, the adapter and the error ‖W − (Q + s·B·A)‖_F after each iteration.</summary>
    /// <param name="Base">The 4-bit base Q to train on.</param>
    /// <param name="A">lora_A [r, in], float32.</param>
    /// <param name="B">lora_B [out, r], float32.</param>
    /// <param name="Errors">Frobenius error after each iteration.</param>
    public sealed record Result(QuantizedTensor Base, float[] A, float[] B, IReadOnlyList<double> Errors);

    /// <summary>Runs <paramref name="iterations"/> LoftQ iterations on W [out, in].</summary>
    /// <param name="weight">W, row-major float32 (the dense checkpoint weight).</param>
    /// <param name="outFeatures">Rows of W.</param>
    /// <param name="inFeatures">Columns of W.</param>
    /// <param name="rank">LoRA rank r.</param>
    /// <param name="scaling">LoRA scaling s (alpha / r, or alpha / √r with rsLoRA).</param>
    /// <param name="quantization">How the base is quantized.</param>
    /// <param name="iterations">Alternations (PEFT's loftq_iter; 1 is PEFT's default).</param>
    /// <param name="name">The tensor's name, for errors.</param>
    /// <exception cref="ArgumentOutOfRangeException">Rank, scaling or iterations out of range.</exception>
    public static Result Initialize(ReadOnlySpan<float> weight, int outFeatures, int inFeatures, int rank, double scaling, QuantizationOptions quantization, int iterations = 1, string? name = null)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(iterations, 1);
        if (!(scaling > 0) || double.IsInfinity(scaling))
        {
            throw new ArgumentOutOfRangeException(nameof(scaling), scaling, "The LoRA scaling must be positive.");
        }

        int n = weight.Length;
        float[] w = weight.ToArray();
        var target = new float[n];
        w.CopyTo(target, 0); // what gets quantized: W, then W − L·R
        QuantizedTensor q = null!;
        double[] l = [], r = [];
        var errors = new List<double>(iterations);
        for (int it = 0; it < iterations; it++)
        {
            q = QuantizedTensor.Quantize(target, [outFeatures, inFeatures], quantization, name);
            float[] dequantized = q.DequantizeToSingle();
            var residual = new double[n];
            for (int i = 0; i < n; i++)
            {
                residual[i] = (double)w[i] - dequantized[i];
            }

            (l, r, _) = LowRank.Approximate(residual, outFeatures, inFeatures, rank, seed: it);
            double error = 0;
            for (int o = 0; o < outFeatures; o++)
            {
                for (int i = 0; i < inFeatures; i++)
                {
                    double lr = 0;
                    for (int k = 0; k < rank; k++)
                    {
                        lr += l[(o * rank) + k] * r[(k * inFeatures) + i];
                    }

                    double e = residual[(o * inFeatures) + i] - lr;
                    error += e * e;
                    target[(o * inFeatures) + i] = (float)(w[(o * inFeatures) + i] - lr);
                }
            }

            errors.Add(Math.Sqrt(error));
        }

        float[] a = [.. r.Select(v => (float)v)];
        float[] b = [.. l.Select(v => (float)(v / scaling))];
        return new Result(q, a, b, errors);
    }
}
