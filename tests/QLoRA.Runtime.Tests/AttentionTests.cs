using QLoRA.Core;
using QLoRA.Runtime.Ops;
using QLoRA.Runtime.Tensors;

namespace QLoRA.Runtime.Tests;

/// <summary>Packed causal GQA attention against a float64 softmax(QKᵀ)V and finite differences of it.</summary>
public abstract class AttentionTests<TDevice>(TDevice fixture) : IClassFixture<TDevice>
    where TDevice : DeviceFixture
{
    private const int Heads = 4, KvHeads = 2, D = 8;
    private static readonly int[] Boundaries = [0, 5, 5, 8]; // sequences of 5, 0 and 3 tokens
    private const int Tokens = 8;

    private static float[] Random(int count, int seed)
    {
        var rng = new Random(seed);
        return [.. Enumerable.Range(0, count).Select(_ => (float)((rng.NextDouble() * 2) - 1))];
    }

    private static int Start(int t, int window) => Math.Max(t < 5 ? 0 : 5, window > 0 ? t - window + 1 : 0);

    // Plain float64 attention, materializing each row's scores.
    private static double[] Reference(float[] q, float[] k, float[] v, int window)
    {
        var o = new double[Tokens * Heads * D];
        double scale = 1 / Math.Sqrt(D);
        for (int t = 0; t < Tokens; t++)
        {
            for (int h = 0; h < Heads; h++)
            {
                int kvh = h / (Heads / KvHeads);
                var scores = new List<double>();
                for (int j = Start(t, window); j <= t; j++)
                {
                    double sdot = 0;
                    for (int e = 0; e < D; e++)
                    {
                        sdot += (double)q[(((t * Heads) + h) * D) + e] * k[(((j * KvHeads) + kvh) * D) + e];
                    }

                    scores.Add(sdot * scale);
                }

                double max = scores.Max();
                double[] p = [.. scores.Select(x => Math.Exp(x - max))];
                double sum = p.Sum();
                for (int j = Start(t, window); j <= t; j++)
                {
                    for (int e = 0; e < D; e++)
                    {
                        o[(((t * Heads) + h) * D) + e] += p[j - Start(t, window)] / sum * v[(((j * KvHeads) + kvh) * D) + e];
                    }
                }
            }
        }

        return o;
    }

    [Theory]
    [InlineData(0)]
    [InlineData(2)] // Mistral-style sliding window: each token sees itself and one key before it
    public void ForwardAndGradientsMatchFloat64(int window)
    {
        float[] q = Random(Tokens * Heads * D, 1), k = Random(Tokens * KvHeads * D, 2), v = Random(Tokens * KvHeads * D, 3), c = Random(Tokens * Heads * D, 4);
        Devices.Device device = fixture.Device;
        using DeviceTensor tq = DeviceTensor.FromHost<float>(device, q, DType.F32, Tokens, Heads, D);
        using DeviceTensor tk = DeviceTensor.FromHost<float>(device, k, DType.F32, Tokens, KvHeads, D);
        using DeviceTensor tv = DeviceTensor.FromHost<float>(device, v, DType.F32, Tokens, KvHeads, D);
        using DeviceTensor o = DeviceTensor.Allocate(device, DType.F32, Tokens, Heads, D);
        using DeviceTensor lse = DeviceTensor.Allocate(device, DType.F32, Tokens, Heads);
        Attention.Forward(tq, tk, tv, Boundaries, o, lse, window);
        double[] expected = Reference(q, k, v, window);
        float[] got = o.ToHost<float>();
        for (int i = 0; i < got.Length; i++)
        {
            Assert.True(Math.Abs(got[i] - expected[i]) <= 2e-6, $"o[{i}] {got[i]} vs {expected[i]}");
        }

        // The first token of each sequence sees only itself: its output is its own value row.
        Assert.Equal(v[0..D], got[0..D]);

        using DeviceTensor dO = DeviceTensor.FromHost<float>(device, c, DType.F32, Tokens, Heads, D);
        using DeviceTensor dQ = DeviceTensor.Allocate(device, DType.F32, Tokens, Heads, D);
        using DeviceTensor dK = DeviceTensor.Allocate(device, DType.F32, Tokens, KvHeads, D);
        using DeviceTensor dV = DeviceTensor.Allocate(device, DType.F32, Tokens, KvHeads, D);
        Attention.Backward(tq, tk, tv, Boundaries, o, lse, dO, dQ, dK, dV, window);

        double Loss(float[] qs, float[] ks, float[] vs) => Reference(qs, ks, vs, window).Select((x, i) => x * c[i]).Sum();
        void Check(string name, float[] values, float[] grads, Func<float[], double> loss)
        {
            for (int i = 0; i < values.Length; i += 7)
            {
                float[] plus = (float[])values.Clone(), minus = (float[])values.Clone();
                plus[i] += 1e-3f;
                minus[i] -= 1e-3f;
                double fd = (loss(plus) - loss(minus)) / (plus[i] - minus[i]);
                Assert.True(Math.Abs(fd - grads[i]) <= 1e-3 * (Math.Abs(fd) + 0.1), $"{name}[{i}]: finite difference {fd} vs {grads[i]}");
            }
        }

        Check("dq", q, dQ.ToHost<float>(), qs => Loss(qs, k, v));
        Check("dk", k, dK.ToHost<float>(), ks => Loss(q, ks, v));
        Check("dv", v, dV.ToHost<float>(), vs => Loss(q, k, vs));
    }

    // Tiles of 8 rows (a CPU accelerator with 8-thread groups): blocks and key tiles straddle sequence boundaries and
    // the window; each row's output and gradients must still match float64 (gradients via the float64 output's finite
    // differences along a random direction).
    // The same checks run on the CPU schedule (whole rows per task, no tiles) of the same accelerator.
    [Theory]
    [InlineData(0, false)]
    [InlineData(5, false)]
    [InlineData(0, true)]
    [InlineData(5, true)]
    public void EightRowTilesAcrossSequenceBoundariesMatchFloat64(int window, bool cpuSchedule)
    {
        const int tokens = 27, heads = 6, kvHeads = 3, d = 5;
        int[] boundaries = [0, 11, 12, 27];
        using Devices.Device device = Devices.Device.Cpu(4, 2, cpuSchedules: cpuSchedule);
        Assert.Equal(8, Attention.Tile(device, d));
        float[] q = Random(tokens * heads * d, 11), k = Random(tokens * kvHeads * d, 12), v = Random(tokens * kvHeads * d, 13), c = Random(tokens * heads * d, 14);
        int StartOf(int t)
        {
            int s = boundaries.Last(b => b <= t && Array.IndexOf(boundaries, b) < boundaries.Length - 1 && boundaries[Array.IndexOf(boundaries, b) + 1] > t);
            return window > 0 ? Math.Max(s, t - window + 1) : s;
        }

        double[] Reference(float[] qs, float[] ks, float[] vs)
        {
            var o = new double[qs.Length];
            for (int t = 0; t < tokens; t++)
            {
                for (int h = 0; h < heads; h++)
                {
                    int kvh = h / (heads / kvHeads), first = StartOf(t);
                    double[] scores = [.. Enumerable.Range(first, t - first + 1).Select(j => Enumerable.Range(0, d).Sum(e => (double)qs[(((t * heads) + h) * d) + e] * ks[(((j * kvHeads) + kvh) * d) + e]) / Math.Sqrt(d))];
                    double max = scores.Max(), sum = scores.Sum(x => Math.Exp(x - max));
                    for (int j = first; j <= t; j++)
                    {
                        for (int e = 0; e < d; e++)
                        {
                            o[(((t * heads) + h) * d) + e] += Math.Exp(scores[j - first] - max) / sum * vs[(((j * kvHeads) + kvh) * d) + e];
                        }
                    }
                }
            }

            return o;
        }

        using DeviceTensor tq = DeviceTensor.FromHost<float>(device, q, DType.F32, tokens, heads, d);
        using DeviceTensor tk = DeviceTensor.FromHost<float>(device, k, DType.F32, tokens, kvHeads, d);
        using DeviceTensor tv = DeviceTensor.FromHost<float>(device, v, DType.F32, tokens, kvHeads, d);
        using DeviceTensor o = DeviceTensor.FromHost<float>(device, Enumerable.Repeat(float.NaN, q.Length).ToArray(), DType.F32, tokens, heads, d);
        using DeviceTensor lse = DeviceTensor.Allocate(device, DType.F32, tokens, heads);
        Attention.Forward(tq, tk, tv, boundaries, o, lse, window);
        double[] expected = Reference(q, k, v);
        float[] got = o.ToHost<float>();
        for (int i = 0; i < got.Length; i++)
        {
            Assert.True(Math.Abs(got[i] - expected[i]) <= 2e-6, $"o[{i}] {got[i]} vs {expected[i]}");
        }

        using DeviceTensor dO = DeviceTensor.FromHost<float>(device, c, DType.F32, tokens, heads, d);
        using DeviceTensor dQ = DeviceTensor.Allocate(device, DType.F32, tokens, heads, d);
        using DeviceTensor dK = DeviceTensor.Allocate(device, DType.F32, tokens, kvHeads, d);
        using DeviceTensor dV = DeviceTensor.Allocate(device, DType.F32, tokens, kvHeads, d);
        Attention.Backward(tq, tk, tv, boundaries, o, lse, dO, dQ, dK, dV, window);
        double Loss(float[] qs, float[] ks, float[] vs) => Reference(qs, ks, vs).Select((x, i) => x * c[i]).Sum();
        void Directional(string name, float[] values, float[] grads, Func<float[], double> loss)
        {
            float[] direction = Random(values.Length, 99);
            float[] plus = [.. values.Select((x, i) => x + (1e-3f * direction[i]))], minus = [.. values.Select((x, i) => x - (1e-3f * direction[i]))];
            double fd = (loss(plus) - loss(minus)) / 2e-3;
            double analytic = grads.Select((g, i) => (double)g * direction[i]).Sum();
            Assert.True(Math.Abs(fd - analytic) <= 1e-3 * (Math.Abs(fd) + 1), $"{name}: directional finite difference {fd} vs {analytic}");
        }

        Directional("dq", q, dQ.ToHost<float>(), qs => Loss(qs, k, v));
        Directional("dk", k, dK.ToHost<float>(), ks => Loss(q, ks, v));
        Directional("dv", v, dV.ToHost<float>(), vs => Loss(q, k, vs));
    }

    // CUDA gives a group 48 KiB of shared memory without an opt-in: the dK/dV kernel's Q and dO tiles (2·d + 2 floats
    // per row) must fit, so the tile shrinks with the head dimension.
    [Theory]
    [InlineData(64, 64)]
    [InlineData(128, 32)]
    [InlineData(256, 16)]
    public void CudaTilesFitTheSharedMemoryAvailableWithoutOptIn(int headDim, int tile)
    {
        int floatsPerRow = QLoRA.Runtime.Kernels.AttentionKernels.QueryTileFloats(1, headDim);
        Assert.Equal(tile, Devices.Device.TileSize(64, limitShared: true, floatsPerRow));
        Assert.True(tile * floatsPerRow * 4 <= 48 * 1024);
        Assert.Equal(64, Devices.Device.TileSize(64, limitShared: false, floatsPerRow));
    }

    [Fact]
    public void MalformedBoundariesAndHeadCountsAreRejected()
    {
        Devices.Device device = fixture.Device;
        using DeviceTensor q = DeviceTensor.Allocate(device, DType.F32, 4, 3, 8);
        using DeviceTensor k = DeviceTensor.Allocate(device, DType.F32, 4, 2, 8);
        using DeviceTensor o = DeviceTensor.Allocate(device, DType.F32, 4, 3, 8);
        using DeviceTensor lse = DeviceTensor.Allocate(device, DType.F32, 4, 3);
        Assert.Contains("not a multiple", Assert.Throws<ArgumentException>(() => Attention.Forward(q, k, k, [0, 4], o, lse)).Message);
        using DeviceTensor k1 = DeviceTensor.Allocate(device, DType.F32, 4, 1, 8);
        Assert.Contains("from 0 to 4", Assert.Throws<ArgumentException>(() => Attention.Forward(q, k1, k1, [0, 3], o, lse)).Message);
        Assert.Contains("must not decrease", Assert.Throws<ArgumentException>(() => Attention.Forward(q, k1, k1, [0, 3, 2, 4], o, lse)).Message);
    }
}

/// <summary><see cref="AttentionTests{TDevice}"/> on the CPU accelerator with 2-lane warps.</summary>
public sealed class AttentionTestsOnCpu(CpuDeviceFixture fixture) : AttentionTests<CpuDeviceFixture>(fixture);

/// <summary><see cref="AttentionTests{TDevice}"/> on the CPU accelerator with 32-lane warps.</summary>
public sealed class AttentionTestsOnCpuWarp32(CpuWarp32DeviceFixture fixture) : AttentionTests<CpuWarp32DeviceFixture>(fixture);

/// <summary><see cref="AttentionTests{TDevice}"/> on CUDA (skipped without a CUDA device).</summary>
public sealed class AttentionTestsOnCuda(CudaDeviceFixture fixture) : AttentionTests<CudaDeviceFixture>(fixture);
