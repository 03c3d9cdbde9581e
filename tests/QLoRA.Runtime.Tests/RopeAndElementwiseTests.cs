using ILGPU;
using ILGPU.Runtime;
using QLoRA.Core;
using QLoRA.Core.HuggingFace;
using QLoRA.Runtime.Ops;
using QLoRA.Runtime.Tensors;

namespace QLoRA.Runtime.Tests;

public abstract class RopeAndElementwiseTests<TDevice>(TDevice fixture) : IClassFixture<TDevice>
    where TDevice : DeviceFixture
{
    private static float[] Random(int count, int seed)
    {
        var rng = new Random(seed);
        return [.. Enumerable.Range(0, count).Select(_ => (float)((rng.NextDouble() * 2) - 1))];
    }

    [Fact]
    public void DefaultFrequenciesAreThetaPowers()
    {
        float[] inv = RopeFrequencies.Compute(new RopeParameters(RopeType.Default, 10000), 64);
        Assert.Equal(32, inv.Length);
        Assert.Equal(1f, inv[0]);
        for (int i = 0; i < 32; i++)
        {
            double expected = Math.Pow(10000, -2.0 * i / 64);
            Assert.True(Math.Abs(inv[i] - expected) <= 2e-7 * expected, $"inv[{i}] {inv[i]} vs {expected}");
        }
    }

    [Fact]
    public void Llama3ScalingKeepsHighFrequenciesDividesLowOnesAndBlendsBetween()
    {
        var rope = new RopeParameters(RopeType.Llama3, 500000, 8, 1, 4, 8192);
        float[] plain = RopeFrequencies.Compute(rope with { Type = RopeType.Default }, 128);
        float[] scaled = RopeFrequencies.Compute(rope, 128);
        int kept = 0, divided = 0, blended = 0;
        for (int i = 0; i < 64; i++)
        {
            double wavelength = 2 * Math.PI / plain[i];
            if (wavelength < 8192 / 4.0)
            {
                Assert.Equal(plain[i], scaled[i]);
                kept++;
            }
            else if (wavelength > 8192 / 1.0)
            {
                Assert.Equal(plain[i] / 8, scaled[i], plain[i] * 1e-6f);
                divided++;
            }
            else
            {
                // (1 − s)·f/8 + s·f with s = (8192/λ − 1)/(4 − 1): strictly between f/8 and f.
                double s = ((8192 / wavelength) - 1) / 3;
                double expected = ((1 - s) * plain[i] / 8) + (s * plain[i]);
                Assert.True(Math.Abs(scaled[i] - expected) <= 1e-6 * expected, $"inv[{i}]");
                Assert.InRange(scaled[i], plain[i] / 8, plain[i]);
                blended++;
            }
        }

        Assert.True(kept > 0 && divided > 0 && blended > 0, $"{kept}/{blended}/{divided}");
    }

    [Fact]
    public void RopeRotatesHalvesByPositionAndTheBackwardUndoesIt()
    {
        const int tokens = 7, heads = 3, headDim = 16;
        float[] x = Random(tokens * heads * headDim, 1);
        int[] positions = [0, 1, 2, 0, 1, 5, 63]; // packed sequences restart at 0
        float[] inv = RopeFrequencies.Compute(new RopeParameters(RopeType.Default, 10000), headDim);
        using DeviceTensor t = DeviceTensor.FromHost<float>(fixture.Device, x, DType.F32, tokens, heads, headDim);
        using DeviceTensor p = DeviceTensor.FromHost<int>(fixture.Device, positions, DType.I32, tokens);
        using DeviceTensor f = DeviceTensor.FromHost<float>(fixture.Device, inv, DType.F32, headDim / 2);
        Rope.Forward(t, p, f);
        float[] got = t.ToHost<float>();
        for (int tok = 0; tok < tokens; tok++)
        {
            for (int h = 0; h < heads; h++)
            {
                for (int i = 0; i < headDim / 2; i++)
                {
                    int a = (((tok * heads) + h) * headDim) + i, b = a + (headDim / 2);
                    double angle = positions[tok] * (double)inv[i];
                    double ea = (x[a] * Math.Cos(angle)) - (x[b] * Math.Sin(angle));
                    double eb = (x[b] * Math.Cos(angle)) + (x[a] * Math.Sin(angle));
                    // The angle is rounded to float32 as in transformers: allow its rounding (≈ position·2⁻²⁴).
                    double tolerance = 1e-6 + (positions[tok] * 1.2e-7);
                    Assert.True(Math.Abs(got[a] - ea) <= tolerance && Math.Abs(got[b] - eb) <= tolerance, $"token {tok} head {h} pair {i}");
                }
            }
        }

        Rope.Backward(t, p, f);
        float[] back = t.ToHost<float>();
        for (int i = 0; i < x.Length; i++)
        {
            Assert.True(Math.Abs(back[i] - x[i]) <= 1e-6, $"[{i}] {back[i]} vs {x[i]}");
        }
    }

    [Fact]
    public void AddAndEmbeddingLookup()
    {
        float[] a = Random(50, 2), b = Random(50, 3), table = Random(10 * 5, 4);
        using DeviceTensor ta = DeviceTensor.FromHost<float>(fixture.Device, a, DType.F32, 10, 5);
        using DeviceTensor tb = DeviceTensor.FromHost<float>(fixture.Device, b, DType.F32, 10, 5);
        Elementwise.Add(ta, tb, ta);
        Assert.Equal(a.Zip(b, (x, y) => x + y), ta.ToHost<float>());

        using DeviceTensor emb = DeviceTensor.FromHost<float>(fixture.Device, table, DType.F32, 10, 5);
        using DeviceTensor y = DeviceTensor.Allocate(fixture.Device, DType.F32, 4, 5);
        Elementwise.Embedding(emb, [9, 0, 3, 9], y);
        Assert.Equal([.. table[45..50], .. table[0..5], .. table[15..20], .. table[45..50]], y.ToHost<float>());
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => Elementwise.Embedding(emb, [1, 10], y.Rows(0, 2)));
        Assert.Contains("Token 1 has id 10", e.Message);
    }

    [Fact]
    public void EmbeddingBackwardSumsRepeatedIdsDeterministically()
    {
        int[] ids = [3, 0, 3, 7, 3, 0];
        float[] dy = Random(ids.Length * 5, 9), start = Random(10 * 5, 10);
        float[] Run()
        {
            using DeviceTensor g = DeviceTensor.FromHost<float>(fixture.Device, dy, DType.F32, ids.Length, 5);
            using DeviceTensor table = DeviceTensor.FromHost<float>(fixture.Device, start, DType.F32, 10, 5);
            Elementwise.EmbeddingBackward(g, ids, table);
            return table.ToHost<float>();
        }

        float[] got = Run();
        for (int v = 0; v < 10; v++)
        {
            for (int j = 0; j < 5; j++)
            {
                double expected = start[(v * 5) + j] + Enumerable.Range(0, ids.Length).Where(t => ids[t] == v).Sum(t => (double)dy[(t * 5) + j]);
                Assert.True(Math.Abs(got[(v * 5) + j] - expected) <= 1e-6, $"dTable[{v},{j}] {got[(v * 5) + j]} vs {expected}");
            }
        }

        Assert.Equal(got.Select(BitConverter.SingleToUInt32Bits), Run().Select(BitConverter.SingleToUInt32Bits));
    }
}

/// <summary><see cref="RopeAndElementwiseTests{TDevice}"/> on the CPU accelerator with 2-lane warps.</summary>
public sealed class RopeAndElementwiseTestsOnCpu(CpuDeviceFixture fixture) : RopeAndElementwiseTests<CpuDeviceFixture>(fixture);

/// <summary><see cref="RopeAndElementwiseTests{TDevice}"/> on the CPU accelerator with 32-lane warps.</summary>
public sealed class RopeAndElementwiseTestsOnCpuWarp32(CpuWarp32DeviceFixture fixture) : RopeAndElementwiseTests<CpuWarp32DeviceFixture>(fixture);

/// <summary><see cref="RopeAndElementwiseTests{TDevice}"/> on CUDA (skipped without a CUDA device).</summary>
public sealed class RopeAndElementwiseTestsOnCuda(CudaDeviceFixture fixture) : RopeAndElementwiseTests<CudaDeviceFixture>(fixture);
