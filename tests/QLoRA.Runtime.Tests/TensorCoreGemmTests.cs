using QLoRA.Core;
using QLoRA.Runtime.Devices;
using QLoRA.Runtime.Ops;
using QLoRA.Runtime.Tensors;

namespace QLoRA.Runtime.Tests;

/// <summary>
/// The mma.sync GEMM: its tiling, edges and fragment-to-C mapping on the CPU accelerator (scalar products in place of
/// the tensor-core instruction) against float64; on a CUDA GPU the instruction itself against the portable kernel.
/// </summary>
public class TensorCoreGemmTests(CpuDeviceFixture fixture) : IClassFixture<CpuDeviceFixture>
{
    private static double[] Reference(float[] a, float[] b, int m, int n, int k, out double[] magnitude)
    {
        var c = new double[m * n];
        magnitude = new double[m * n];
        for (int i = 0; i < m; i++)
        {
            for (int j = 0; j < n; j++)
            {
                for (int p = 0; p < k; p++)
                {
                    double term = (double)a[(i * k) + p] * b[(j * k) + p];
                    c[(i * n) + j] += term;
                    magnitude[(i * n) + j] += Math.Abs(term);
                }
            }
        }

        return c;
    }

    [Theory]
    [InlineData(DType.BF16, DType.F32, 37, 45, 33)]  // odd K: element-wise loads; partial tiles on every side
    [InlineData(DType.BF16, DType.BF16, 16, 64, 48)] // exact tiles, paired loads
    [InlineData(DType.F16, DType.F32, 5, 70, 64)]
    [InlineData(DType.F16, DType.F16, 33, 9, 18)]
    public void MatchesFloat64OnTheCpuAccelerator(DType dtype, DType output, int m, int n, int k)
    {
        float[] a = Narrow.Random(m * k, 1, dtype), b = Narrow.Random(n * k, 2, dtype), c0 = Narrow.Random(m * n, 3, output);
        Device device = fixture.Device;
        using DeviceTensor ta = DeviceTensor.FromSingle(device, a, dtype, m, k), tb = DeviceTensor.FromSingle(device, b, dtype, n, k);
        using DeviceTensor tc = DeviceTensor.FromSingle(device, c0, output, m, n);
        Gemm.Multiply(ta, tb, tc, transposeB: true, alpha: 0.5f, beta: 0.25f, path: GemmPath.TensorCore);
        double[] expected = Reference(a, b, m, n, k, out double[] magnitude);
        float[] got = tc.ToSingle();
        double u = Narrow.UnitRoundoff(output);
        for (int i = 0; i < got.Length; i++)
        {
            double e = (0.5 * expected[i]) + (0.25 * c0[i]);
            double bound = (u * Math.Abs(e)) + (1e-5 * ((0.5 * magnitude[i]) + Math.Abs(0.25 * c0[i]))) + 1e-30;
            Assert.True(Math.Abs(got[i] - e) <= bound, $"C[{i / n},{i % n}] {got[i]} vs {e}");
        }
    }

    // The 4-bit weight decoded into fragments: W is code × absmax rounded to the compute dtype (what dequantize-to-bf16
    // yields), so the float64 reference uses exactly those values.
    [Theory]
    [InlineData(DType.BF16, 37, 20, 96, false)]
    [InlineData(DType.F16, 9, 45, 33, true)] // odd K: pairs straddle rows, decoded element by element
    public void FourBitWeightDecodedIntoFragmentsMatchesFloat64(DType dtype, int m, int outFeatures, int inFeatures, bool doubleQuant)
    {
        var weight = QLoRA.Core.Quantization.QuantizedTensor.Quantize(Narrow.Random(outFeatures * inFeatures, 6, DType.F32, 0.1), [outFeatures, inFeatures], new QLoRA.Core.Quantization.QuantizationOptions(QLoRA.Core.Quantization.QuantType.Nf4, 32, doubleQuant));
        float[] w = Narrow.Round(weight.DequantizeToSingle(), dtype), x = Narrow.Random(m * inFeatures, 7, dtype);
        Device device = fixture.Device;
        using var packed = DeviceQuantizedTensor.Upload(device, weight);
        using DeviceTensor tx = DeviceTensor.FromSingle(device, x, dtype, m, inFeatures), y = DeviceTensor.FromSingle(device, new float[m * outFeatures], dtype, m, outFeatures);
        packed.Multiply(tx, y, path: GemmPath.TensorCore);
        double[] expected = Reference(x, w, m, outFeatures, inFeatures, out double[] magnitude);
        float[] got = y.ToSingle();
        double u = Narrow.UnitRoundoff(dtype);
        for (int i = 0; i < got.Length; i++)
        {
            Assert.True(Math.Abs(got[i] - expected[i]) <= (u * Math.Abs(expected[i])) + (1e-5 * magnitude[i]), $"y[{i / outFeatures},{i % outFeatures}] {got[i]} vs {expected[i]}");
        }

        using DeviceTensor wide = DeviceTensor.Allocate(device, DType.F32, m, inFeatures);
        Assert.Throws<ArgumentException>(() => packed.Multiply(wide, y, path: GemmPath.TensorCore));
    }

    [Fact]
    public void RejectsOperandsItDoesNotTake()
    {
        Device device = fixture.Device;
        Assert.False(device.HasTensorCoreMma); // Auto never picks it on the CPU accelerator
        using DeviceTensor a = DeviceTensor.Allocate(device, DType.F32, 4, 8), b = DeviceTensor.Allocate(device, DType.F32, 4, 8), c = DeviceTensor.Allocate(device, DType.F32, 4, 4);
        Assert.Contains("tensor-core GEMM takes BF16 or F16", Assert.Throws<ArgumentException>(() => Gemm.Multiply(a, b, c, transposeB: true, path: GemmPath.TensorCore)).Message);
        using DeviceTensor a16 = DeviceTensor.Allocate(device, DType.BF16, 8, 4), b16 = DeviceTensor.Allocate(device, DType.BF16, 8, 4);
        Assert.Throws<ArgumentException>(() => Gemm.Multiply(a16, b16, c, transposeA: true, path: GemmPath.TensorCore));
    }

    [Theory]
    [InlineData(DType.BF16, 333, 1024, 4096)]
    public void FourBitTensorCoresAgreeWithThePortableKernelOnCuda(DType dtype, int m, int outFeatures, int inFeatures)
    {
        using Device device = Device.Best();
        if (device.Kind != DeviceKind.Cuda)
        {
            Assert.Skip("needs a CUDA device (run the test executable on a GPU machine)");
        }

        var weight = QLoRA.Core.Quantization.QuantizedTensor.Quantize(Narrow.Random(outFeatures * inFeatures, 8, DType.F32, 0.1), [outFeatures, inFeatures]);
        float[] x = Narrow.Random(m * inFeatures, 9, dtype);
        using var packed = DeviceQuantizedTensor.Upload(device, weight);
        using DeviceTensor tx = DeviceTensor.FromSingle(device, x, dtype, m, inFeatures);
        using DeviceTensor mma = DeviceTensor.Allocate(device, dtype, m, outFeatures), portable = DeviceTensor.Allocate(device, dtype, m, outFeatures);
        packed.Multiply(tx, mma, path: GemmPath.TensorCore);
        packed.Multiply(tx, portable, path: GemmPath.Portable);
        float[] got = mma.ToSingle(), expected = portable.ToSingle();
        double bound = 4 * Narrow.UnitRoundoff(dtype) * 0.1 * Math.Sqrt(inFeatures) * 3; // weight rounding over random-sign sums, plus output rounding
        for (int i = 0; i < got.Length; i++)
        {
            Assert.True(Math.Abs(got[i] - expected[i]) <= bound + (2 * Narrow.UnitRoundoff(dtype) * Math.Abs(expected[i])), $"y[{i / outFeatures},{i % outFeatures}] tensor cores {got[i]} vs portable {expected[i]}");
        }
    }

    [Theory]
    [InlineData(DType.BF16, 1000, 1536, 520)]
    [InlineData(DType.F16, 77, 200, 4096)]
    public void TensorCoresAgreeWithThePortableKernelOnCuda(DType dtype, int m, int n, int k)
    {
        using Device device = Device.Best();
        if (device.Kind != DeviceKind.Cuda)
        {
            Assert.Skip("needs a CUDA device (run the test executable on a GPU machine)");
        }

        float[] a = Narrow.Random(m * k, 4, dtype), b = Narrow.Random(n * k, 5, dtype);
        using DeviceTensor ta = DeviceTensor.FromSingle(device, a, dtype, m, k), tb = DeviceTensor.FromSingle(device, b, dtype, n, k);
        using DeviceTensor mma = DeviceTensor.Allocate(device, DType.F32, m, n), portable = DeviceTensor.Allocate(device, DType.F32, m, n);
        Gemm.Multiply(ta, tb, mma, transposeB: true, path: GemmPath.TensorCore);
        Gemm.Multiply(ta, tb, portable, transposeB: true, path: GemmPath.Portable);
        float[] got = mma.ToHost<float>(), expected = portable.ToHost<float>();
        double scale = Math.Sqrt(k); // |terms| ≤ 1, random signs
        for (int i = 0; i < got.Length; i++)
        {
            Assert.True(Math.Abs(got[i] - expected[i]) <= 1e-4 * scale * Math.Sqrt(k), $"C[{i / n},{i % n}] tensor cores {got[i]} vs portable {expected[i]}");
        }
    }
}
