using QLoRA.Core;
using QLoRA.Runtime.Devices;
using QLoRA.Runtime.Ops;
using QLoRA.Runtime.Tensors;

namespace QLoRA.Runtime.Tests;

/// <summary>
/// The mma.sync GEMM: its tiling, edges and fragment-to-C mapping on the CPU accelerator (scalar products in place of
/// the tensor-core instruction) against float64; on a CUDA GPU the instruction itself against the portable kernel.
/// </summary>
public class TensorCoreGemmTests(WarpDeviceFixture fixture) : IClassFixture<WarpDeviceFixture>
{
    private static double[] Reference(float[] a, float[] b, int m, int n, int k, out double[] magnitude)
    {
        (double[] c, magnitude) = Float64Product.TimesTransposed(a, b, m, n, k);
        return c;
    }

    [Theory]
    [InlineData(DType.BF16, DType.F32, 37, 45, 33, false, true)]  // odd K: element-wise loads; partial tiles on every side
    [InlineData(DType.BF16, DType.BF16, 16, 64, 48, false, true)] // exact tiles, paired loads
    [InlineData(DType.F16, DType.F32, 5, 70, 64, true, false)]    // Aᵀ·B: both operands stored transposed
    [InlineData(DType.F16, DType.F16, 33, 9, 18, false, false)]   // x·W (the input gradient's orientation)
    [InlineData(DType.BF16, DType.F32, 20, 7, 45, true, true)]    // dyᵀ·x-style weight gradient into float32
    [InlineData(DType.BF16, DType.BF16, 80, 70, 40, false, true)] // 2 × 2 block tiles, two K slices, partial edges
    public void MatchesFloat64OnTheCpuAccelerator(DType dtype, DType output, int m, int n, int k, bool transposeA, bool transposeB)
    {
        float[] a = Narrow.Random(m * k, 1, dtype), b = Narrow.Random(n * k, 2, dtype), c0 = Narrow.Random(m * n, 3, output);
        Device device = fixture.Device;
        using DeviceTensor ta = DeviceTensor.FromSingle(device, transposeA ? Transpose(a, m, k) : a, dtype, transposeA ? [k, m] : [m, k]);
        using DeviceTensor tb = DeviceTensor.FromSingle(device, transposeB ? b : Transpose(b, n, k), dtype, transposeB ? [n, k] : [k, n]);
        using DeviceTensor tc = DeviceTensor.FromSingle(device, c0, output, m, n);
        Gemm.Multiply(ta, tb, tc, transposeA, transposeB, alpha: 0.5f, beta: 0.25f, path: GemmPath.TensorCore);
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

    // [rows, cols] row-major → [cols, rows] row-major.
    private static float[] Transpose(float[] m, int rows, int cols)
    {
        var t = new float[m.Length];
        for (int r = 0; r < rows; r++)
        {
            for (int c = 0; c < cols; c++)
            {
                t[(c * rows) + r] = m[(r * cols) + c];
            }
        }

        return t;
    }

    // The 4-bit weight decoded into fragments: W is code × absmax rounded to the compute dtype (what dequantize-to-bf16
    // yields), so the float64 reference uses exactly those values.
    [Theory]
    [InlineData(DType.BF16, 37, 20, 96, false, true)]
    [InlineData(DType.F16, 9, 45, 33, true, true)]   // odd K: pairs straddle rows, decoded element by element
    [InlineData(DType.BF16, 11, 40, 64, true, false)] // dy·W: the operand is Wᵀ, pairs from two weight rows
    public void FourBitWeightDecodedIntoFragmentsMatchesFloat64(DType dtype, int m, int outFeatures, int inFeatures, bool doubleQuant, bool transposeWeight)
    {
        var weight = QLoRA.Core.Quantization.QuantizedTensor.Quantize(Narrow.Random(outFeatures * inFeatures, 6, DType.F32, 0.1), [outFeatures, inFeatures], new QLoRA.Core.Quantization.QuantizationOptions(QLoRA.Core.Quantization.QuantType.Nf4, 32, doubleQuant));
        float[] w = Narrow.Round(weight.DequantizeToSingle(), dtype);
        int inner = transposeWeight ? inFeatures : outFeatures, n = transposeWeight ? outFeatures : inFeatures;
        float[] x = Narrow.Random(m * inner, 7, dtype), operand = transposeWeight ? w : Transpose(w, outFeatures, inFeatures); // B as [n, inner]
        Device device = fixture.Device;
        using var packed = DeviceQuantizedTensor.Upload(device, weight);
        using DeviceTensor tx = DeviceTensor.FromSingle(device, x, dtype, m, inner), y = DeviceTensor.FromSingle(device, new float[m * n], dtype, m, n);
        packed.Multiply(tx, y, transposeWeight, path: GemmPath.TensorCore);
        double[] expected = Reference(x, operand, m, n, inner, out double[] magnitude);
        float[] got = y.ToSingle();
        double u = Narrow.UnitRoundoff(dtype);
        for (int i = 0; i < got.Length; i++)
        {
            Assert.True(Math.Abs(got[i] - expected[i]) <= (u * Math.Abs(expected[i])) + (1e-5 * magnitude[i]), $"y[{i / n},{i % n}] {got[i]} vs {expected[i]}");
        }

        using DeviceTensor wide = DeviceTensor.Allocate(device, DType.F32, m, inner);
        Assert.Throws<ArgumentException>(() => packed.Multiply(wide, y, transposeWeight, path: GemmPath.TensorCore));
    }

    [Fact]
    public void RejectsOperandsItDoesNotTake()
    {
        Device device = fixture.Device;
        Assert.False(device.HasTensorCoreMma); // Auto never picks it on the CPU accelerator
        using (Device narrowWarps = Device.Cpu())
        using (DeviceTensor h = DeviceTensor.Allocate(narrowWarps, DType.BF16, 4, 8), hc = DeviceTensor.Allocate(narrowWarps, DType.BF16, 4, 4))
        {
            Assert.Contains("four 32-lane warps", Assert.Throws<ArgumentException>(() => Gemm.Multiply(h, h, hc, transposeB: true, path: GemmPath.TensorCore)).Message);
        }

        using DeviceTensor a = DeviceTensor.Allocate(device, DType.F32, 4, 8), b = DeviceTensor.Allocate(device, DType.F32, 4, 8), c = DeviceTensor.Allocate(device, DType.F32, 4, 4);
        Assert.Contains("tensor-core GEMM takes BF16 or F16", Assert.Throws<ArgumentException>(() => Gemm.Multiply(a, b, c, transposeB: true, path: GemmPath.TensorCore)).Message);
    }

    [Theory]
    [InlineData(DType.BF16, 333, 1024, 4096, true)]
    [InlineData(DType.F16, 130, 4096, 1024, false)]
    public void FourBitTensorCoresAgreeWithThePortableKernelOnCuda(DType dtype, int m, int outFeatures, int inFeatures, bool transposeWeight)
    {
        using Device device = Device.Best();
        if (device.Kind != DeviceKind.Cuda)
        {
            Assert.Skip("needs a CUDA device (run the test executable on a GPU machine)");
        }

        var weight = QLoRA.Core.Quantization.QuantizedTensor.Quantize(Narrow.Random(outFeatures * inFeatures, 8, DType.F32, 0.1), [outFeatures, inFeatures]);
        int inner = transposeWeight ? inFeatures : outFeatures, n = transposeWeight ? outFeatures : inFeatures;
        float[] x = Narrow.Random(m * inner, 9, dtype);
        using var packed = DeviceQuantizedTensor.Upload(device, weight);
        using DeviceTensor tx = DeviceTensor.FromSingle(device, x, dtype, m, inner);
        using DeviceTensor mma = DeviceTensor.Allocate(device, dtype, m, n), portable = DeviceTensor.Allocate(device, dtype, m, n);
        packed.Multiply(tx, mma, transposeWeight, path: GemmPath.TensorCore);
        packed.Multiply(tx, portable, transposeWeight, path: GemmPath.Portable);
        float[] got = mma.ToSingle(), expected = portable.ToSingle();
        // Both paths decode each weight to the same dtype value and multiply exact inputs; they differ only in the
        // order of their float32 sums (each within γ_k·Σ|x·w| of the exact sum) and in one rounding of the output.
        float[] w = Narrow.Round(weight.DequantizeToSingle(), dtype);   // [outFeatures, inFeatures]
        for (int row = 0; row < m; row++)
        for (int col = 0; col < n; col++)
        {
            double magnitude = 0;
            for (int j = 0; j < inner; j++)
            {
                float wij = transposeWeight ? w[(col * inFeatures) + j] : w[(j * inFeatures) + col];
                magnitude += Math.Abs((double)x[(row * inner) + j] * wij);
            }
            int i = (row * n) + col;
            double bound = (2 * Gamma(inner) * magnitude) + (Narrow.UnitRoundoff(dtype) * (Math.Abs(got[i]) + Math.Abs(expected[i])));
            Assert.True(Math.Abs(got[i] - expected[i]) <= bound, $"y[{row},{col}] tensor cores {got[i]} vs portable {expected[i]} (bound {bound})");
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
        // bf16/f16 products are exact in float32; the two kernels differ only in summation order, each within
        // γ_k·Σ|a·b| of the exact dot product (float32 accumulation, u = 2⁻²⁴).
        for (int row = 0; row < m; row++)
        for (int col = 0; col < n; col++)
        {
            double magnitude = 0;
            for (int j = 0; j < k; j++) magnitude += Math.Abs((double)a[(row * k) + j] * b[(col * k) + j]);
            int i = (row * n) + col;
            Assert.True(Math.Abs(got[i] - expected[i]) <= 2 * Gamma(k) * magnitude, $"C[{row},{col}] tensor cores {got[i]} vs portable {expected[i]}");
        }
    }

    // γₙ = n·u / (1 − n·u) with float32's unit roundoff: the bound on an n-term float32 dot product's error.
    private static double Gamma(int n) => n * Math.Pow(2, -24) / (1 - (n * Math.Pow(2, -24)));
}
