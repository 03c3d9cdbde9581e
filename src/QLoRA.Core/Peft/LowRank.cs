namespace QLoRA.Core.Peft;

/// <summary>
/// The best rank-r approximation L·R of a dense matrix M [rows, cols] (Eckart–Young: the truncated SVD, with L = U·√S and
/// R = √S·Vᵀ), computed in float64 by block subspace iteration — M·Ω, then alternately Mᵀ·Y and M·Z, each block
/// orthonormalized — and a Jacobi eigen-decomposition of the small r×r Gram matrix. Deterministic for a seed.
/// </summary>
public static class LowRank
{
    /// <summary>Factors of the rank-<paramref name="rank"/> approximation of <paramref name="m"/>: L [rows, r] and R [r, cols], row-major.</summary>
    /// <param name="m">The matrix, row-major.</param>
    /// <param name="rows">Rows of <paramref name="m"/>.</param>
    /// <param name="cols">Columns of <paramref name="m"/>.</param>
    /// <param name="rank">r, at most min(rows, cols).</param>
    /// <param name="iterations">Subspace iterations (each sharpens the leading singular vectors).</param>
    /// <param name="seed">Seed of the starting block.</param>
    /// <exception cref="ArgumentOutOfRangeException">The rank is not in [1, min(rows, cols)] or the sizes disagree.</exception>
    public static (double[] L, double[] R, double[] SingularValues) Approximate(ReadOnlySpan<double> m, int rows, int cols, int rank, int iterations = 8, int seed = 0)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(rank, 1);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(rank, Math.Min(rows, cols));
        if (m.Length != (long)rows * cols)
        {
            throw new ArgumentOutOfRangeException(nameof(m), $"{m.Length} values for a [{rows}, {cols}] matrix.");
        }

        double[] a = m.ToArray();
        var rng = new Random(seed);
        var omega = new double[cols * rank];
        for (int i = 0; i < omega.Length; i++)
        {
            omega[i] = rng.NextDouble() - 0.5;
        }

        double[] y = Orthonormalize(Multiply(a, rows, cols, omega, rank, transposeA: false), rows, rank);
        for (int it = 0; it < iterations; it++)
        {
            double[] z = Orthonormalize(Multiply(a, rows, cols, y, rank, transposeA: true), cols, rank);
            y = Orthonormalize(Multiply(a, rows, cols, z, rank, transposeA: false), rows, rank);
        }

        // B = Yᵀ M [r, cols]; B Bᵀ = W Λ Wᵀ; M ≈ Y B = (Y W) S Vᵀ with S = √Λ and Vᵀ = S⁻¹ Wᵀ B.
        double[] b = Multiply(a, rows, cols, y, rank, transposeA: true); // Mᵀ Y [cols, r] = Bᵀ
        var gram = new double[rank * rank];
        for (int i = 0; i < rank; i++)
        {
            for (int j = 0; j < rank; j++)
            {
                double s = 0;
                for (int c = 0; c < cols; c++)
                {
                    s += b[(c * rank) + i] * b[(c * rank) + j];
                }

                gram[(i * rank) + j] = s;
            }
        }

        (double[] eigenvalues, double[] w) = SymmetricEigen(gram, rank);
        var singular = new double[rank];
        var l = new double[rows * rank];
        var r = new double[rank * cols];
        for (int k = 0; k < rank; k++)
        {
            singular[k] = Math.Sqrt(Math.Max(0, eigenvalues[k]));
            double root = Math.Sqrt(singular[k]);
            for (int row = 0; row < rows; row++)
            {
                double u = 0;
                for (int i = 0; i < rank; i++)
                {
                    u += y[(row * rank) + i] * w[(i * rank) + k];
                }

                l[(row * rank) + k] = u * root;
            }

            for (int c = 0; c < cols; c++)
            {
                double v = 0;
                for (int i = 0; i < rank; i++)
                {
                    v += b[(c * rank) + i] * w[(i * rank) + k];
                }

                r[(k * cols) + c] = singular[k] > 0 ? v / singular[k] * root : 0;
            }
        }

        return (l, r, singular);
    }

    // A [rows, cols] (or Aᵀ) times X [cols or rows, k], row-major, rows of the result in parallel.
    private static double[] Multiply(double[] a, int rows, int cols, double[] x, int k, bool transposeA)
    {
        int outRows = transposeA ? cols : rows;
        var result = new double[outRows * k];
        if (!transposeA)
        {
            Parallel.For(0, rows, row =>
            {
                for (int c = 0; c < cols; c++)
                {
                    double v = a[((long)row * cols) + c];
                    for (int j = 0; j < k; j++)
                    {
                        result[(row * k) + j] += v * x[(c * k) + j];
                    }
                }
            });
            return result;
        }

        Parallel.For(0, cols, c =>
        {
            for (int row = 0; row < rows; row++)
            {
                double v = a[((long)row * cols) + c];
                for (int j = 0; j < k; j++)
                {
                    result[(c * k) + j] += v * x[(row * k) + j];
                }
            }
        });
        return result;
    }

    // Modified Gram–Schmidt (twice, for stability) on the k columns of X [n, k].
    private static double[] Orthonormalize(double[] x, int n, int k)
    {
        for (int pass = 0; pass < 2; pass++)
        {
            for (int j = 0; j < k; j++)
            {
                for (int i = 0; i < j; i++)
                {
                    double dot = 0;
                    for (int row = 0; row < n; row++)
                    {
                        dot += x[(row * k) + i] * x[(row * k) + j];
                    }

                    for (int row = 0; row < n; row++)
                    {
                        x[(row * k) + j] -= dot * x[(row * k) + i];
                    }
                }

                double norm = 0;
                for (int row = 0; row < n; row++)
                {
                    norm += x[(row * k) + j] * x[(row * k) + j];
                }

                norm = Math.Sqrt(norm);
                for (int row = 0; row < n; row++)
                {
                    x[(row * k) + j] = norm > 0 ? x[(row * k) + j] / norm : 0;
                }
            }
        }

        return x;
    }

    // Cyclic Jacobi on a symmetric n×n matrix: eigenvalues descending, eigenvectors as the columns of V.
    private static (double[] Values, double[] Vectors) SymmetricEigen(double[] s, int n)
    {
        double[] a = (double[])s.Clone();
        var v = new double[n * n];
        for (int i = 0; i < n; i++)
        {
            v[(i * n) + i] = 1;
        }

        for (int sweep = 0; sweep < 100; sweep++)
        {
            double off = 0;
            for (int p = 0; p < n; p++)
            {
                for (int q = p + 1; q < n; q++)
                {
                    off += a[(p * n) + q] * a[(p * n) + q];
                }
            }

            if (off < 1e-30)
            {
                break;
            }

            for (int p = 0; p < n; p++)
            {
                for (int q = p + 1; q < n; q++)
                {
                    double apq = a[(p * n) + q];
                    if (Math.Abs(apq) < 1e-300)
                    {
                        continue;
                    }

                    double theta = (a[(q * n) + q] - a[(p * n) + p]) / (2 * apq);
                    double t = Math.Sign(theta == 0 ? 1 : theta) / (Math.Abs(theta) + Math.Sqrt((theta * theta) + 1));
                    double c = 1 / Math.Sqrt((t * t) + 1), sn = t * c;
                    for (int k = 0; k < n; k++)
                    {
                        double akp = a[(k * n) + p], akq = a[(k * n) + q];
                        a[(k * n) + p] = (c * akp) - (sn * akq);
                        a[(k * n) + q] = (sn * akp) + (c * akq);
                    }

                    for (int k = 0; k < n; k++)
                    {
                        double apk = a[(p * n) + k], aqk = a[(q * n) + k];
                        a[(p * n) + k] = (c * apk) - (sn * aqk);
                        a[(q * n) + k] = (sn * apk) + (c * aqk);
                    }

                    for (int k = 0; k < n; k++)
                    {
                        double vkp = v[(k * n) + p], vkq = v[(k * n) + q];
                        v[(k * n) + p] = (c * vkp) - (sn * vkq);
                        v[(k * n) + q] = (sn * vkp) + (c * vkq);
                    }
                }
            }
        }

        int[] order = [.. Enumerable.Range(0, n).OrderByDescending(i => a[(i * n) + i])];
        var values = new double[n];
        var vectors = new double[n * n];
        for (int k = 0; k < n; k++)
        {
            values[k] = a[(order[k] * n) + order[k]];
            for (int i = 0; i < n; i++)
            {
                vectors[(i * n) + k] = v[(i * n) + order[k]];
            }
        }

        return (values, vectors);
    }
}
