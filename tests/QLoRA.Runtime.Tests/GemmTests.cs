using QLoRA.Core;
using QLoRA.Runtime.Ops;
using QLoRA.Runtime.Tensors;

namespace QLoRA.Runtime.Tests;

/// <summary>The portable GEMM against a float64 product; errors bounded relative to Σ|a·b| of each dot product.</summary>
public abstract class GemmTests<TDevice>(TDevice fixture) : IClassFixture<TDevice>
    where TDevice : DeviceFixture
{
    private static float[] Random(int count, int seed)
    {
        var rng = new Random(seed);
        return [.. Enumerable.Range(0, count).Select(_ => (float)((rng.NextDouble() * 2) - 1))];
    }

    [Theory]
    [InlineData(7, 5, 13, false, false)]
    [InlineData(17, 9, 33, false, true)]   // y = x·Wᵀ
    [InlineData(6, 11, 3, true, false)]    // dW = dyᵀ·x
    [InlineData(5, 5, 64, true, true)]
    [InlineData(1, 31, 16, false, true)]   // one token (decode)
    public void ProductMatchesFloat64(int m, int n, int k, bool transposeA, bool transposeB)
    {
        float[] a = Random(m * k, m + k), b = Random(k * n, n + k), c0 = Random(m * n, 99);
        long[] aShape = transposeA ? [k, m] : [m, k];
        long[] bShape = transposeB ? [n, k] : [k, n];
        using DeviceTensor ta = DeviceTensor.FromHost<float>(fixture.Device, a, DType.F32, aShape);
        using DeviceTensor tb = DeviceTensor.FromHost<float>(fixture.Device, b, DType.F32, bShape);
        using DeviceTensor tc = DeviceTensor.FromHost<float>(fixture.Device, c0, DType.F32, m, n);
        const float alpha = 0.5f, beta = 2f;
        Gemm.Multiply(ta, tb, tc, transposeA, transposeB, alpha, beta);
        float[] got = tc.ToHost<float>();
        for (int i = 0; i < m; i++)
        {
            for (int j = 0; j < n; j++)
            {
                double sum = 0, magnitude = 0;
                for (int p = 0; p < k; p++)
                {
                    double av = transposeA ? a[(p * m) + i] : a[(i * k) + p];
                    double bv = transposeB ? b[(j * k) + p] : b[(p * n) + j];
                    sum += av * bv;
                    magnitude += Math.Abs(av * bv);
                }

                double expected = (alpha * sum) + (beta * c0[(i * n) + j]);
                double bound = (1e-6 * k * ((alpha * magnitude) + Math.Abs(beta * c0[(i * n) + j]))) + 1e-7;
                Assert.True(Math.Abs(got[(i * n) + j] - expected) <= bound, $"C[{i},{j}] {got[(i * n) + j]} vs {expected}");
            }
        }
    }

    [Fact]
    public void MismatchedInnerDimensionsNameBothShapes()
    {
        using DeviceTensor a = DeviceTensor.Allocate(fixture.Device, DType.F32, 3, 4);
        using DeviceTensor b = DeviceTensor.Allocate(fixture.Device, DType.F32, 5, 2);
        using DeviceTensor c = DeviceTensor.Allocate(fixture.Device, DType.F32, 3, 2);
        var e = Assert.Throws<ArgumentException>(() => Gemm.Multiply(a, b, c));
        Assert.Contains("op(A) is [3, 4] and op(B) is [5, 2]", e.Message);
    }
}

/// <summary><see cref="GemmTests{TDevice}"/> on the CPU accelerator with 2-lane warps.</summary>
public sealed class GemmTestsOnCpu(CpuDeviceFixture fixture) : GemmTests<CpuDeviceFixture>(fixture);

/// <summary><see cref="GemmTests{TDevice}"/> on the CPU accelerator with 32-lane warps.</summary>
public sealed class GemmTestsOnCpuWarp32(CpuWarp32DeviceFixture fixture) : GemmTests<CpuWarp32DeviceFixture>(fixture);

/// <summary><see cref="GemmTests{TDevice}"/> on CUDA (skipped without a CUDA device).</summary>
public sealed class GemmTestsOnCuda(CudaDeviceFixture fixture) : GemmTests<CudaDeviceFixture>(fixture);
