using ILGPU;
using ILGPU.Runtime;
using QLoRA.Core;
using QLoRA.Runtime.Ops;
using QLoRA.Runtime.Tensors;

namespace QLoRA.Runtime.Tests;

/// <summary>Elementwise and row ops on the CPU accelerator against float64 references and finite differences.</summary>
public abstract class OpsTests<TDevice>(TDevice fixture) : IClassFixture<TDevice>
    where TDevice : DeviceFixture
{
    private static float[] Random(int count, int seed, double scale = 1)
    {
        var rng = new Random(seed);
        return [.. Enumerable.Range(0, count).Select(_ => (float)(((rng.NextDouble() * 2) - 1) * scale))];
    }

    private DeviceTensor Up(float[] data, params long[] shape) => DeviceTensor.FromHost<float>(fixture.Device, data, DType.F32, shape);

    private DeviceTensor Empty(params long[] shape)
    {
        DeviceTensor t = DeviceTensor.Allocate(fixture.Device, DType.F32, shape);
        t.View<float>().MemSetToZero();
        return t;
    }

    // Plain float64 RMSNorm.
    private static double[] RmsNormReference(float[] x, float[] w, int rows, int dim, double eps, out double[] inv)
    {
        var y = new double[x.Length];
        inv = new double[rows];
        for (int r = 0; r < rows; r++)
        {
            double ss = 0;
            for (int j = 0; j < dim; j++)
            {
                ss += (double)x[(r * dim) + j] * x[(r * dim) + j];
            }

            inv[r] = 1 / Math.Sqrt((ss / dim) + eps);
            for (int j = 0; j < dim; j++)
            {
                y[(r * dim) + j] = w[j] * x[(r * dim) + j] * inv[r];
            }
        }

        return y;
    }

    [Theory]
    [InlineData(5, 37, 1.0, 1e-5f)]
    [InlineData(3, 64, 1.0, 1e-5f)]
    [InlineData(4, 48, 0.01, 1e-4f)]   // eps comparable to mean(x²): where it sits inside the square root matters
    public void RmsNormForwardAndBackwardMatchFloat64AndFiniteDifferences(int rows, int dim, double inputScale, float eps)
    {
        float[] x = Random(rows * dim, 1, 2 * inputScale), w = Random(dim, 2), c = Random(rows * dim, 3);
        using DeviceTensor dx = Up(x, rows, dim), dw = Up(w, dim), y = Empty(rows, dim), inv = Empty(rows);
        RmsNorm.Forward(dx, dw, y, inv, eps);
        float[] got = y.ToHost<float>();
        double[] expected = RmsNormReference(x, w, rows, dim, eps, out double[] invRef);
        // float32: the sum of squares is within γ_dim (all terms positive), then mean, +eps, sqrt, reciprocal and two
        // products add a few unit roundoffs; the bound is relative to |y| (x scaled by 1/rms).
        double u = Math.Pow(2, -24), bound = (dim * u / (1 - (dim * u))) + (8 * u);
        for (int i = 0; i < got.Length; i++)
        {
            Assert.True(Math.Abs(got[i] - expected[i]) <= bound * Math.Abs(expected[i]) + 1e-30, $"y[{i}] {got[i]} vs {expected[i]}");
        }

        // Backward of L = Σ c ⊙ y: analytic float64 gradient, then finite differences of the float64 forward.
        using DeviceTensor dy = Up(c, rows, dim), gx = Empty(rows, dim), gw = Empty(dim);
        RmsNorm.Backward(dx, dw, dy, inv, gx, gw);
        float[] gotDx = gx.ToHost<float>(), gotDw = gw.ToHost<float>();
        for (int r = 0; r < rows; r++)
        {
            double dot = 0;
            for (int j = 0; j < dim; j++)
            {
                dot += w[j] * (double)c[(r * dim) + j] * x[(r * dim) + j];
            }

            for (int j = 0; j < dim; j++)
            {
                int i = (r * dim) + j;
                double expectedDx = (invRef[r] * w[j] * c[i]) - (x[i] * Math.Pow(invRef[r], 3) * dot / dim);
                double scale = (invRef[r] * Math.Abs(w[j] * c[i])) + (Math.Abs(x[i]) * Math.Pow(invRef[r], 3) * dim * 4 / dim);
                Assert.True(Math.Abs(gotDx[i] - expectedDx) <= 1e-5 * scale + 1e-7, $"dx[{i}] {gotDx[i]} vs {expectedDx}");
            }
        }

        for (int j = 0; j < dim; j++)
        {
            double expectedDw = 0, scale = 0;
            for (int r = 0; r < rows; r++)
            {
                expectedDw += c[(r * dim) + j] * (double)x[(r * dim) + j] * invRef[r];
                scale += Math.Abs(c[(r * dim) + j] * (double)x[(r * dim) + j] * invRef[r]);
            }

            Assert.True(Math.Abs(gotDw[j] - expectedDw) <= 1e-5 * scale + 1e-7, $"dw[{j}] {gotDw[j]} vs {expectedDw}");
        }

        // Accumulating (a trained norm over micro-batches): the new sum is added to what dw held, one rounding per
        // element — old + (the overwrite's value) exactly; frozen (null): nothing computed, dx the same.
        float[] old = Random(dim, 4);
        using (DeviceTensor acc = Up(old, dim), gx2 = Empty(rows, dim))
        {
            RmsNorm.Backward(dx, dw, dy, inv, gx2, acc, accumulate: true);
            Assert.Equal(old.Select((v, j) => v + gotDw[j]), acc.ToHost<float>());
            RmsNorm.Backward(dx, dw, dy, inv, gx2, null);
            Assert.Equal(gotDx, gx2.ToHost<float>());
        }

        // Finite differences (central, float64 forward) on a few coordinates of x and w.
        double Loss(float[] xs, float[] ws) => RmsNormReference(xs, ws, rows, dim, eps, out _).Select((v, i) => v * c[i]).Sum();
        foreach (int i in new[] { 0, dim + 3, (rows * dim) - 1 })
        {
            float[] plus = (float[])x.Clone(), minus = (float[])x.Clone();
            plus[i] += 1e-3f;
            minus[i] -= 1e-3f;
            double fd = (Loss(plus, w) - Loss(minus, w)) / (plus[i] - minus[i]);
            Assert.True(Math.Abs(fd - gotDx[i]) <= 1e-3 * (Math.Abs(fd) + 1), $"fd dx[{i}] {fd} vs {gotDx[i]}");
        }

        foreach (int j in new[] { 0, dim / 2 })
        {
            float[] plus = (float[])w.Clone(), minus = (float[])w.Clone();
            plus[j] += 1e-3f;
            minus[j] -= 1e-3f;
            double fd = (Loss(x, plus) - Loss(x, minus)) / (plus[j] - minus[j]);
            Assert.True(Math.Abs(fd - gotDw[j]) <= 1e-3 * (Math.Abs(fd) + 1), $"fd dw[{j}] {fd} vs {gotDw[j]}");
        }
    }

    [Fact]
    public void SwiGluMatchesFloat64ForwardAndBackward()
    {
        const int n = 1001;
        float[] g = Random(n, 4, 6), u = Random(n, 5, 2), c = Random(n, 6);
        using DeviceTensor gate = Up(g, n), up = Up(u, n), y = Empty(n), dy = Up(c, n), dg = Empty(n), du = Empty(n);
        SwiGlu.Forward(gate, up, y);
        SwiGlu.Backward(gate, up, dy, dg, du);
        float[] gy = y.ToHost<float>(), gdg = dg.ToHost<float>(), gdu = du.ToHost<float>();
        for (int i = 0; i < n; i++)
        {
            double s = 1 / (1 + Math.Exp(-g[i]));
            double silu = g[i] * s;
            Assert.True(Math.Abs(gy[i] - (silu * u[i])) <= 1e-5 * (Math.Abs(silu * u[i]) + 1e-4), $"y[{i}]");
            Assert.True(Math.Abs(gdu[i] - (c[i] * silu)) <= 1e-5 * (Math.Abs(c[i] * silu) + 1e-4), $"du[{i}]");
            double expectedDg = c[i] * u[i] * s * (1 + (g[i] * (1 - s)));
            Assert.True(Math.Abs(gdg[i] - expectedDg) <= 1e-5 * (Math.Abs(c[i] * u[i]) + 1e-4), $"dg[{i}] {gdg[i]} vs {expectedDg}");
        }
    }

    [Fact]
    public void AdamWMatchesAFloat64ReferenceOverSeveralSteps()
    {
        const int n = 333;
        var options = new AdamWOptions(LearningRate: 1e-2, WeightDecay: 0.1);
        float[] p0 = Random(n, 7);
        using DeviceTensor p = Up(p0, n), m = Empty(n), v = Empty(n);
        double[] rp = [.. p0.Select(x => (double)x)], rm = new double[n], rv = new double[n];
        for (int step = 1; step <= 3; step++)
        {
            float[] grad = Random(n, 10 + step);
            using DeviceTensor g = Up(grad, n);
            AdamW.Step(p, g, m, v, step, options);
            for (int i = 0; i < n; i++)
            {
                rp[i] *= 1 - (options.LearningRate * options.WeightDecay);
                rm[i] = (options.Beta1 * rm[i]) + ((1 - options.Beta1) * grad[i]);
                rv[i] = (options.Beta2 * rv[i]) + ((1 - options.Beta2) * grad[i] * grad[i]);
                double mHat = rm[i] / (1 - Math.Pow(options.Beta1, step));
                double vHat = rv[i] / (1 - Math.Pow(options.Beta2, step));
                rp[i] -= options.LearningRate * mHat / (Math.Sqrt(vHat) + options.Epsilon);
            }
        }

        float[] got = p.ToHost<float>();
        for (int i = 0; i < n; i++)
        {
            // Float32 rounding of the starting value, plus each lr-sized update off by up to ~1e-5 relative: β2 = 0.999 is
            // 0.99900001 in float32, so 1 − β2 differs from 0.001 by 1.3e-5 (as in PyTorch's float32 optimizers).
            double bound = (1e-6 * Math.Abs(p0[i])) + (3 * options.LearningRate * 2e-5);
            Assert.True(Math.Abs(got[i] - rp[i]) <= bound, $"p[{i}] {got[i]} vs {rp[i]}");
        }
    }

    [Fact]
    public void KernelsAreBitReproducibleRunToRun()
    {
        float[] x = Random(9 * 50, 8), w = Random(50, 9), c = Random(9 * 50, 10);
        float[] Run()
        {
            using DeviceTensor dx = Up(x, 9, 50), dw = Up(w, 50), y = Empty(9, 50), inv = Empty(9), dy = Up(c, 9, 50), gx = Empty(9, 50), gw = Empty(50);
            RmsNorm.Forward(dx, dw, y, inv, 1e-6f);
            RmsNorm.Backward(dx, dw, dy, inv, gx, gw);
            return [.. y.ToHost<float>(), .. gx.ToHost<float>(), .. gw.ToHost<float>()];
        }

        Assert.Equal(Run().Select(BitConverter.SingleToUInt32Bits), Run().Select(BitConverter.SingleToUInt32Bits));
    }

    [Fact]
    public void ShapeMismatchesNameTheArgument()
    {
        using DeviceTensor x = Empty(2, 8), w = Empty(7), y = Empty(2, 8), inv = Empty(2);
        var e = Assert.Throws<ArgumentException>(() => RmsNorm.Forward(x, w, y, inv, 1e-5f));
        Assert.Contains("weight has shape [7]; [8] is required", e.Message);
    }
}

/// <summary><see cref="OpsTests{TDevice}"/> on the CPU accelerator with 2-lane warps.</summary>
public sealed class OpsTestsOnCpu(CpuDeviceFixture fixture) : OpsTests<CpuDeviceFixture>(fixture);

/// <summary><see cref="OpsTests{TDevice}"/> on the CPU accelerator with 32-lane warps.</summary>
public sealed class OpsTestsOnCpuWarp32(CpuWarp32DeviceFixture fixture) : OpsTests<CpuWarp32DeviceFixture>(fixture);

/// <summary><see cref="OpsTests{TDevice}"/> on CUDA (skipped without a CUDA device).</summary>
public sealed class OpsTestsOnCuda(CudaDeviceFixture fixture) : OpsTests<CudaDeviceFixture>(fixture);
