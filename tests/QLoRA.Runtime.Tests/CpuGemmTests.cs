using System.Runtime.Intrinsics.X86;
using QLoRA.Core;
using QLoRA.Core.Quantization;
using QLoRA.Runtime.Cpu;
using QLoRA.Runtime.Ops;
using QLoRA.Runtime.Tensors;

namespace QLoRA.Runtime.Tests;

/// <summary>
/// The CPU accelerator's blocked SIMD GEMM against a float64 product, on every vector path (AVX-512, AVX2, scalar): all
/// dtypes of A/B and C, all transposes, sizes off every tile and block edge, α/β, and bit-identical results across paths
/// and runs (one FMA per product in k order on every path).
/// </summary>
[Collection("CpuGemmPaths")]
public class CpuGemmTests(CpuDeviceFixture fixture) : IClassFixture<CpuDeviceFixture>
{
    public static TheoryData<int> Widths() => new() { 0, 256, 512 };

    private static void RequireWidth(int width)
    {
        if (width == 256 && !(Avx2.IsSupported && Fma.IsSupported))
        {
            Assert.Skip("this CPU has no AVX2/FMA: the 256-bit GEMM tile cannot run here");
        }

        if (width == 512 && !Avx512F.IsSupported)
        {
            Assert.Skip("this CPU has no AVX-512F: the 512-bit GEMM tile cannot run here");
        }
    }

    private static T WithWidth<T>(int width, Func<T> body)
    {
        RequireWidth(width);
        int saved = CpuGemm.VectorWidth;
        CpuGemm.VectorWidth = width;
        try
        {
            return body();
        }
        finally
        {
            CpuGemm.VectorWidth = saved;
        }
    }

    private static float[] Random(int count, int seed)
    {
        var rng = new Random(seed);
        return [.. Enumerable.Range(0, count).Select(_ => (float)((rng.NextDouble() * 2) - 1))];
    }

    private static double Unit(DType dtype) => dtype switch { DType.BF16 => Math.Pow(2, -8), DType.F16 => Math.Pow(2, -11), _ => Math.Pow(2, -24) };

    // What the device holds for host values stored as dtype (exact float32 of the rounded elements).
    private float[] Stored(float[] values, DType dtype, params long[] shape)
    {
        using DeviceTensor t = DeviceTensor.FromSingle(fixture.Device, values, dtype, shape);
        return t.ToSingle();
    }

    public static TheoryData<int, int, int, bool, bool, DType, DType> Cases()
    {
        var data = new TheoryData<int, int, int, bool, bool, DType, DType>();
        (int M, int N, int K)[] sizes = [(1, 1, 1), (7, 5, 13), (6, 16, 8), (49, 33, 70), (13, 97, 3), (50, 17, 0), (1, 31, 64)];
        foreach ((int m, int n, int k) in sizes)
        {
            foreach (bool ta in new[] { false, true })
            {
                foreach (bool tb in new[] { false, true })
                {
                    data.Add(m, n, k, ta, tb, DType.F32, DType.F32);
                }
            }
        }

        data.Add(49, 33, 70, false, true, DType.BF16, DType.BF16);
        data.Add(49, 33, 70, true, false, DType.BF16, DType.F32);
        data.Add(13, 97, 31, false, false, DType.F16, DType.F16);
        data.Add(13, 97, 31, true, true, DType.F16, DType.F32);
        // A few rows against Bᵀ (decode's lm_head, LoRA's x·Aᵀ): the small-M path, full and partial tiles of 12 B rows.
        data.Add(8, 130, 257, false, true, DType.F32, DType.F32);
        data.Add(8, 130, 257, true, true, DType.F32, DType.F32);
        data.Add(16, 25, 40, false, true, DType.BF16, DType.BF16);
        data.Add(3, 50, 64, true, true, DType.F16, DType.F32);
        data.Add(12, 12, 5, false, true, DType.F32, DType.F32);
        return data;
    }

    // The small-M path (B's rows read in place, the tile transposed) against the panel path: the same bits, on every
    // vector path, for each M up to a vector's lanes.
    [Theory]
    [MemberData(nameof(Widths))]
    public void TheSmallMPathGivesThePanelPathsBits(int width)
    {
        const int n = 77, k = 129;
        foreach (int m in new[] { 1, 2, 5, 8, 11, 16 })
        {
            foreach (DType dtype in new[] { DType.F32, DType.BF16 })
            {
                float[] a = Stored(Random(m * k, m), dtype, m, k), b = Stored(Random(n * k, m + 1), dtype, n, k), c0 = Stored(Random(m * n, 5), dtype, m, n);
                float[] Run(bool smallM) => WithWidth(width, () =>
                {
                    bool saved = CpuGemm.SmallMEnabled;
                    CpuGemm.SmallMEnabled = smallM;
                    try
                    {
                        using DeviceTensor ta = DeviceTensor.FromSingle(fixture.Device, a, dtype, m, k);
                        using DeviceTensor tb = DeviceTensor.FromSingle(fixture.Device, b, dtype, n, k);
                        using DeviceTensor tc = DeviceTensor.FromSingle(fixture.Device, c0, dtype, m, n);
                        Gemm.Multiply(ta, tb, tc, transposeB: true, alpha: 0.75f, beta: -1.5f, path: GemmPath.Cpu);
                        return tc.ToSingle();
                    }
                    finally
                    {
                        CpuGemm.SmallMEnabled = saved;
                    }
                });
                Assert.Equal(Run(false).Select(BitConverter.SingleToInt32Bits), Run(true).Select(BitConverter.SingleToInt32Bits));
            }
        }
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void MatchesFloat64OnEveryPathAndEveryPathGivesTheSameBits(int m, int n, int k, bool transposeA, bool transposeB, DType dtype, DType outDtype)
    {
        long[] aShape = transposeA ? [k, m] : [m, k];
        long[] bShape = transposeB ? [n, k] : [k, n];
        float[] a = Stored(Random(m * k, m + (3 * k)), dtype, aShape);
        float[] b = Stored(Random(k * n, n + (7 * k)), dtype, bShape);
        float[] c0 = Stored(Random(m * n, 99), outDtype, m, n);
        const float alpha = 0.75f, beta = -1.5f;
        float[]? first = null;
        foreach (int width in new[] { 0, 256, 512 })
        {
            if ((width == 256 && !(Avx2.IsSupported && Fma.IsSupported)) || (width == 512 && !Avx512F.IsSupported))
            {
                continue;
            }

            float[] got = WithWidth(width, () =>
            {
                using DeviceTensor ta = DeviceTensor.FromSingle(fixture.Device, a, dtype, aShape);
                using DeviceTensor tb = DeviceTensor.FromSingle(fixture.Device, b, dtype, bShape);
                using DeviceTensor tc = DeviceTensor.FromSingle(fixture.Device, c0, outDtype, m, n);
                Gemm.Multiply(ta, tb, tc, transposeA, transposeB, alpha, beta, GemmPath.Cpu);
                return tc.ToSingle();
            });
            if (first is null)
            {
                first = got;
            }
            else
            {
                Assert.Equal(first.Select(BitConverter.SingleToInt32Bits), got.Select(BitConverter.SingleToInt32Bits));
            }
        }

        Assert.NotNull(first);
        double gamma = k * Math.Pow(2, -24) / (1 - (k * Math.Pow(2, -24)));
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

                double old = c0[(i * n) + j];
                double expected = (alpha * sum) + (beta * old);
                // γₖ·Σ|a·b| for the float32 sum, a few float32 roundings of α·s + β·c, then one rounding to C's dtype.
                double bound = (gamma * Math.Abs(alpha) * magnitude) + (3 * Math.Pow(2, -24) * ((Math.Abs(alpha) * magnitude) + Math.Abs(beta * old)))
                    + (Unit(outDtype) * Math.Abs(expected)) + 1e-30;
                Assert.True(Math.Abs(first[(i * n) + j] - expected) <= bound * 1.0001, $"C[{i},{j}] {first[(i * n) + j]} vs {expected} (bound {bound})");
            }
        }
    }

    [Theory]
    [MemberData(nameof(Widths))]
    public void BetaZeroNeverReadsCAndRunsRepeatBitForBit(int width)
    {
        float[] a = Random(101 * 67, 1), b = Random(67 * 45, 2);
        float[][] runs = WithWidth(width, () => Enumerable.Range(0, 2).Select(_ =>
        {
            using DeviceTensor ta = DeviceTensor.FromHost<float>(fixture.Device, a, DType.F32, 101, 67);
            using DeviceTensor tb = DeviceTensor.FromHost<float>(fixture.Device, b, DType.F32, 67, 45);
            using DeviceTensor tc = DeviceTensor.FromHost<float>(fixture.Device, Enumerable.Repeat(float.NaN, 101 * 45).ToArray(), DType.F32, 101, 45);
            Gemm.Multiply(ta, tb, tc, path: GemmPath.Cpu);
            return tc.ToHost<float>();
        }).ToArray());
        Assert.DoesNotContain(runs[0], float.IsNaN);
        Assert.Equal(runs[0], runs[1]);
    }

    [Fact]
    public void AutoTakesTheCpuKernelOnTheCpuAcceleratorAndItAgreesWithThePortableKernelWithinBounds()
    {
        float[] a = Random(20 * 300, 5), b = Random(300 * 9, 6);
        using DeviceTensor ta = DeviceTensor.FromHost<float>(fixture.Device, a, DType.F32, 20, 300);
        using DeviceTensor tb = DeviceTensor.FromHost<float>(fixture.Device, b, DType.F32, 300, 9);
        using DeviceTensor auto = DeviceTensor.Allocate(fixture.Device, DType.F32, 20, 9);
        using DeviceTensor cpu = DeviceTensor.Allocate(fixture.Device, DType.F32, 20, 9);
        using DeviceTensor portable = DeviceTensor.Allocate(fixture.Device, DType.F32, 20, 9);
        Gemm.Multiply(ta, tb, auto);
        Gemm.Multiply(ta, tb, cpu, path: GemmPath.Cpu);
        Gemm.Multiply(ta, tb, portable, path: GemmPath.Portable);
        Assert.Equal(cpu.ToHost<float>(), auto.ToHost<float>());
        float[] p = portable.ToHost<float>(), c = cpu.ToHost<float>();
        // Both are float32 sums in k order; the portable kernel rounds each product before adding, the CPU one fuses them.
        for (int i = 0; i < p.Length; i++)
        {
            Assert.True(Math.Abs(p[i] - c[i]) <= 2 * 300 * Math.Pow(2, -24) * 300, $"{i}: {p[i]} vs {c[i]}");
        }
    }

    [Theory]
    [InlineData(true, QuantType.Nf4, true, DType.F32)]
    [InlineData(false, QuantType.Nf4, true, DType.F32)]
    [InlineData(true, QuantType.Fp4, false, DType.BF16)]
    [InlineData(false, QuantType.Fp4, true, DType.F16)]
    public void FourBitWeightsDecodeInsideThePanelsAsCoreDequantizesThem(bool transposeWeight, QuantType type, bool doubleQuant, DType dtype)
    {
        const int m = 50, outFeatures = 70, inFeatures = 97; // odd: codes straddle bytes and blocks straddle rows
        var tensor = QuantizedTensor.Quantize(Random(outFeatures * inFeatures, 21), [outFeatures, inFeatures], new QuantizationOptions(type, 64, doubleQuant));
        float[] w = tensor.DequantizeToSingle(); // QLoRA.Core's decode, checked against bitsandbytes' rules
        int inner = transposeWeight ? inFeatures : outFeatures, n = transposeWeight ? outFeatures : inFeatures;
        float[] x = Stored(Random(m * inner, 22), dtype, m, inner), c0 = Stored(Random(m * n, 23), dtype, m, n);
        float[]? first = null;
        foreach (int width in new[] { 0, 256, 512 })
        {
            if ((width == 256 && !(Avx2.IsSupported && Fma.IsSupported)) || (width == 512 && !Avx512F.IsSupported))
            {
                continue;
            }

            float[] got = WithWidth(width, () =>
            {
                using DeviceQuantizedTensor onDevice = DeviceQuantizedTensor.Upload(fixture.Device, tensor);
                using DeviceTensor tx = DeviceTensor.FromSingle(fixture.Device, x, dtype, m, inner);
                using DeviceTensor tc = DeviceTensor.FromSingle(fixture.Device, c0, dtype, m, n);
                onDevice.Multiply(tx, tc, transposeWeight, alpha: 0.5f, beta: 1f, path: GemmPath.Cpu);
                return tc.ToSingle();
            });
            first ??= got;
            Assert.Equal(first.Select(BitConverter.SingleToInt32Bits), got.Select(BitConverter.SingleToInt32Bits));
        }

        Assert.NotNull(first);
        double gamma = inner * Math.Pow(2, -24) / (1 - (inner * Math.Pow(2, -24)));
        for (int i = 0; i < m; i++)
        {
            for (int j = 0; j < n; j++)
            {
                double sum = 0, magnitude = 0;
                for (int k = 0; k < inner; k++)
                {
                    double wv = transposeWeight ? w[(j * inFeatures) + k] : w[(k * inFeatures) + j];
                    sum += x[(i * inner) + k] * wv;
                    magnitude += Math.Abs(x[(i * inner) + k] * wv);
                }

                double old = c0[(i * n) + j], expected = (0.5 * sum) + old;
                double bound = (gamma * 0.5 * magnitude) + (3 * Math.Pow(2, -24) * ((0.5 * magnitude) + Math.Abs(old))) + (Unit(dtype) * Math.Abs(expected)) + 1e-30;
                Assert.True(Math.Abs(first[(i * n) + j] - expected) <= bound * 1.0001, $"C[{i},{j}] {first[(i * n) + j]} vs {expected} (bound {bound})");
            }
        }
    }
}
