using QLoRA.Core.Peft;
using QLoRA.Core.Quantization;

namespace QLoRA.Core.Tests.Peft;

/// <summary>
/// The rank-r approximation against a matrix built from known singular vectors and values (Eckart–Young: the error is
/// exactly the dropped singular values), and LoftQ against the plain quantize-and-zero-B start it improves on.
/// </summary>
public class LoftQTests
{
    // Orthonormal columns (Gram–Schmidt of random vectors), written plainly.
    private static double[][] Orthonormal(int n, int k, Random rng)
    {
        var q = new double[k][];
        for (int j = 0; j < k; j++)
        {
            double[] v = [.. Enumerable.Range(0, n).Select(_ => rng.NextDouble() - 0.5)];
            for (int i = 0; i < j; i++)
            {
                double dot = v.Zip(q[i]).Sum(p => p.First * p.Second);
                v = [.. v.Zip(q[i]).Select(p => p.First - (dot * p.Second))];
            }

            double norm = Math.Sqrt(v.Sum(x => x * x));
            q[j] = [.. v.Select(x => x / norm)];
        }

        return q;
    }

    [Fact]
    public void TheRankRApproximationLeavesExactlyTheDroppedSingularValues()
    {
        const int rows = 40, cols = 30;
        double[] sigma = [9, 6, 4, 1.5, 1, 0.5, 0.25, 0.1];
        var rng = new Random(3);
        double[][] u = Orthonormal(rows, sigma.Length, rng), v = Orthonormal(cols, sigma.Length, rng);
        var m = new double[rows * cols];
        for (int k = 0; k < sigma.Length; k++)
        {
            for (int i = 0; i < rows; i++)
            {
                for (int j = 0; j < cols; j++)
                {
                    m[(i * cols) + j] += sigma[k] * u[k][i] * v[k][j];
                }
            }
        }

        foreach (int rank in new[] { 1, 3, 5 })
        {
            (double[] l, double[] r, double[] s) = LowRank.Approximate(m, rows, cols, rank, iterations: 30);
            Assert.Equal(sigma[..rank], s.Select(x => Math.Round(x, 9)));
            double error = 0;
            for (int i = 0; i < rows; i++)
            {
                for (int j = 0; j < cols; j++)
                {
                    double lr = Enumerable.Range(0, rank).Sum(k => l[(i * rank) + k] * r[(k * cols) + j]);
                    error += Math.Pow(m[(i * cols) + j] - lr, 2);
                }
            }

            double dropped = sigma[rank..].Sum(x => x * x);
            Assert.True(Math.Abs(error - dropped) <= 1e-9 * dropped, $"rank {rank}: error² {error} vs Σ dropped σ² {dropped}");
        }

        Assert.Throws<ArgumentOutOfRangeException>(() => LowRank.Approximate(m, rows, cols, 31));
    }

    [Fact]
    public void LoftQBringsQuantizedBasePlusAdapterCloserToTheWeightThanQuantizationAlone()
    {
        const int outF = 64, inF = 128, rank = 8;
        var rng = new Random(5);
        // A weight with some low-rank structure on top of noise, as trained weights have.
        double[][] u = Orthonormal(outF, 4, rng), v = Orthonormal(inF, 4, rng);
        float[] w = [.. Enumerable.Range(0, outF * inF).Select(i => (float)((0.02 * (rng.NextDouble() - 0.5)) + Enumerable.Range(0, 4).Sum(k => (0.4 / (k + 1)) * u[k][i / inF] * v[k][i % inF])))];
        float[] plain = QuantizedTensor.Quantize(w, [outF, inF]).DequantizeToSingle();
        double zeroB = Math.Sqrt(w.Zip(plain).Sum(p => Math.Pow(p.First - p.Second, 2)));

        const double scaling = 2.0; // alpha 16, r 8
        LoftQ.Result result = LoftQ.Initialize(w, outF, inF, rank, scaling, QuantizationOptions.Default, iterations: 4);
        float[] q = result.Base.DequantizeToSingle();
        double error = 0;
        for (int o = 0; o < outF; o++)
        {
            for (int i = 0; i < inF; i++)
            {
                double ba = Enumerable.Range(0, rank).Sum(k => (double)result.B[(o * rank) + k] * result.A[(k * inF) + i]);
                error += Math.Pow(w[(o * inF) + i] - (q[(o * inF) + i] + (scaling * ba)), 2);
            }
        }

        error = Math.Sqrt(error);
        Assert.Equal(4, result.Errors.Count);
        Assert.True(Math.Abs(error - result.Errors[^1]) <= 1e-4 * error, $"{error} vs reported {result.Errors[^1]}");
        Assert.True(error < 0.8 * zeroB, $"LoftQ error {error} vs quantize-and-B=0 {zeroB}");
        Assert.True(result.Errors[^1] <= result.Errors[0] * 1.001, $"iterations must not make it worse: {string.Join(", ", result.Errors)}");
    }
}
