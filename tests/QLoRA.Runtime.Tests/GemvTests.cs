using QLoRA.Core;
using QLoRA.Core.Quantization;
using QLoRA.Runtime.Tensors;

namespace QLoRA.Runtime.Tests;

/// <summary>Fused 4-bit GEMV against float64 products of the host-dequantized weight.</summary>
public abstract class GemvTests<TDevice>(TDevice fixture) : IClassFixture<TDevice>
    where TDevice : DeviceFixture
{
    private static float[] Random(int count, int seed, double scale = 1)
    {
        var rng = new Random(seed);
        return [.. Enumerable.Range(0, count).Select(_ => (float)(((rng.NextDouble() * 2) - 1) * scale))];
    }

    [Theory]
    [InlineData(1, 37, 64, QuantType.Nf4, true)]
    [InlineData(3, 20, 96, QuantType.Nf4, false)]
    [InlineData(8, 5, 128, QuantType.Fp4, true)]
    [InlineData(4, 9, 96, QuantType.Nf4, true, 64)]     // blocks straddle rows (96 % 64 = 32)
    [InlineData(2, 33, 160, QuantType.Fp4, false, 128)]
    [InlineData(2, 6, 2048, QuantType.Nf4, true, 64)]   // 64 chunks per row: every lane of a 32-lane warp holds partial sums
    public void MatchesFloat64OfTheDequantizedWeight(int batch, int outFeatures, int inFeatures, QuantType type, bool doubleQuant, int blockSize = 32)
    {
        var tensor = QuantizedTensor.Quantize(Random(outFeatures * inFeatures, 1, 0.1), [outFeatures, inFeatures], new QuantizationOptions(type, blockSize, doubleQuant));
        float[] w = tensor.DequantizeToSingle();
        float[] x = Random(batch * inFeatures, 2);
        using DeviceQuantizedTensor onDevice = DeviceQuantizedTensor.Upload(fixture.Device, tensor);
        using DeviceTensor tx = DeviceTensor.FromHost<float>(fixture.Device, x, DType.F32, batch, inFeatures);
        using DeviceTensor ty = DeviceTensor.Allocate(fixture.Device, DType.F32, batch, outFeatures);
        onDevice.Gemv(tx, ty);
        float[] y = ty.ToHost<float>();
        (double[] sum, double[] magnitude) = Float64Product.TimesTransposed(x, w, batch, outFeatures, inFeatures);
        for (int e = 0; e < y.Length; e++)
        {
            Assert.True(Math.Abs(y[e] - sum[e]) <= (1e-6 * inFeatures * magnitude[e]) + 1e-7, $"y[{e / outFeatures},{e % outFeatures}] {y[e]} vs {sum[e]}");
        }
    }

    [Theory]
    [InlineData(true, 5, 19, 48, false)]
    [InlineData(false, 6, 19, 48, true)]
    [InlineData(true, 1, 7, 33, true)]   // odd in_features: codes straddle bytes
    public void FusedGemmDecodesTheWeightOnTheFly(bool transposeWeight, int m, int outFeatures, int inFeatures, bool doubleQuant)
    {
        var tensor = QuantizedTensor.Quantize(Random(outFeatures * inFeatures, 5, 0.1), [outFeatures, inFeatures], new QuantizationOptions(QuantType.Nf4, 32, doubleQuant));
        float[] w = tensor.DequantizeToSingle();
        int inner = transposeWeight ? inFeatures : outFeatures, n = transposeWeight ? outFeatures : inFeatures;
        float[] x = Random(m * inner, 6), c0 = Random(m * n, 7);
        using DeviceQuantizedTensor onDevice = DeviceQuantizedTensor.Upload(fixture.Device, tensor);
        using DeviceTensor tx = DeviceTensor.FromHost<float>(fixture.Device, x, DType.F32, m, inner);
        using DeviceTensor tc = DeviceTensor.FromHost<float>(fixture.Device, c0, DType.F32, m, n);
        onDevice.Multiply(tx, tc, transposeWeight, alpha: 0.5f, beta: 1f);
        float[] got = tc.ToHost<float>();
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

                double expected = (0.5 * sum) + c0[(i * n) + j];
                Assert.True(Math.Abs(got[(i * n) + j] - expected) <= (1e-6 * inner * (magnitude + Math.Abs(c0[(i * n) + j]))) + 1e-7, $"C[{i},{j}] {got[(i * n) + j]} vs {expected}");
            }
        }
    }

    [Fact]
    public void RejectsUnsupportedShapes()
    {
        var tensor = QuantizedTensor.Quantize(Random(4 * 40, 3), [4, 40]);
        using DeviceQuantizedTensor onDevice = DeviceQuantizedTensor.Upload(fixture.Device, tensor);
        using DeviceTensor x = DeviceTensor.Allocate(fixture.Device, DType.F32, 1, 40);
        using DeviceTensor y = DeviceTensor.Allocate(fixture.Device, DType.F32, 1, 4);
        Assert.Contains("multiple of 32", Assert.Throws<ArgumentException>(() => onDevice.Gemv(x, y)).Message);
        using DeviceTensor x9 = DeviceTensor.Allocate(fixture.Device, DType.F32, 9, 40);
        Assert.Contains("[1…8, 40]", Assert.Throws<ArgumentException>(() => onDevice.Gemv(x9, y)).Message);
    }
}

/// <summary><see cref="GemvTests{TDevice}"/> on the CPU accelerator with 2-lane warps.</summary>
public sealed class GemvTestsOnCpu(CpuDeviceFixture fixture) : GemvTests<CpuDeviceFixture>(fixture);

/// <summary><see cref="GemvTests{TDevice}"/> on the CPU accelerator with 32-lane warps.</summary>
public sealed class GemvTestsOnCpuWarp32(CpuWarp32DeviceFixture fixture) : GemvTests<CpuWarp32DeviceFixture>(fixture);

/// <summary><see cref="GemvTests{TDevice}"/> on CUDA (skipped without a CUDA device).</summary>
public sealed class GemvTestsOnCuda(CudaDeviceFixture fixture) : GemvTests<CudaDeviceFixture>(fixture);
