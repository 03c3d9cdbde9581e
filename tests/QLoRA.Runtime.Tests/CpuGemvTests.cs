using System.Runtime.Intrinsics.X86;
using QLoRA.Core.Quantization;
using QLoRA.Runtime.Cpu;

namespace QLoRA.Runtime.Tests;

/// <summary>
/// The CPU decode GEMV on each of its vector paths (scalar, AVX2, AVX-512; a path this CPU lacks is skipped), called
/// with the path named rather than through a process-wide switch: against float64 products of the dequantized weight,
/// and batch-invariant bit for bit — a row of x gives the same y alone, in any batch and at any place in it, which is
/// what lets a sequence decoded in a batch get the tokens it gets alone.
/// </summary>
public class CpuGemvTests
{
    // Rows are split over up to 4 tasks per core: enough rows that each task has groups of four and a tail.
    public static TheoryData<int, int, int, int, QuantType, bool> Cases() => new()
    {
        { 0, 37, 64, 32, QuantType.Nf4, true },
        { 256, 37, 64, 32, QuantType.Nf4, true },
        { 512, 37, 64, 32, QuantType.Nf4, true },    // 37 weight rows: groups of four and a tail of one
        { 512, 70, 96, 64, QuantType.Fp4, false },   // blocks straddle weight rows (96 % 64 = 32): one row at a time
        { 256, 70, 96, 64, QuantType.Fp4, false },
        { 512, 13, 256, 4096, QuantType.Nf4, true }, // one block larger than a row
        { 512, 40, 512, 128, QuantType.Nf4, true },  // several blocks per row, shared by four rows
        { 0, 40, 512, 128, QuantType.Nf4, true },
        { 0, 67, 192, 128, QuantType.Nf4, true },    // 192 % 128: blocks straddle rows on every path
        { 256, 67, 192, 128, QuantType.Nf4, true },
        { 512, 67, 192, 128, QuantType.Nf4, true },
    };

    private static float[] Random(int count, int seed, double scale = 1)
    {
        var rng = new Random(seed);
        return [.. Enumerable.Range(0, count).Select(_ => (float)(((rng.NextDouble() * 2) - 1) * scale))];
    }

    private static void RequirePath(int width)
    {
        if ((width == 512 && !Avx512F.IsSupported) || (width == 256 && !(Avx2.IsSupported && Fma.IsSupported)))
        {
            Assert.Skip($"this CPU has no {width}-bit GEMV path");
        }
    }

    private static unsafe float[] Gemv(QuantizedTensor weight, float[] x, int batch, int width)
    {
        int outFeatures = (int)weight.State.Shape[0], inFeatures = (int)weight.State.Shape[1];
        var y = new float[batch * outFeatures];
        byte[] packed = weight.Packed.ToArray();
        fixed (byte* p = packed)
        fixed (float* px = x, py = y)
        {
            CpuGemv.Multiply(p, weight.State.Code.ToArray(), weight.State.Absmax.Decode(), weight.State.BlockSize, outFeatures, inFeatures, px, py, CpuElement.F32, batch, width);
        }

        return y;
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void MatchesFloat64OfTheDequantizedWeight(int width, int outFeatures, int inFeatures, int blockSize, QuantType type, bool doubleQuant)
    {
        RequirePath(width);
        const int batch = 6;
        var weight = QuantizedTensor.Quantize(Random(outFeatures * inFeatures, 1, 0.1), [outFeatures, inFeatures], new QuantizationOptions(type, blockSize, doubleQuant));
        float[] w = weight.DequantizeToSingle(), x = Random(batch * inFeatures, 2);
        float[] y = Gemv(weight, x, batch, width);
        // Float32 sums of in products (each w·x rounded or fused) and one absmax scaling: within γ(in + 2) of Σ|w·x|.
        double u = Math.Pow(2, -24), gamma = (inFeatures + 2) * u / (1 - ((inFeatures + 2) * u));
        (double[] sum, double[] magnitude) = Float64Product.TimesTransposed(x, w, batch, outFeatures, inFeatures);
        for (int e = 0; e < y.Length; e++)
        {
            Assert.True(Math.Abs(y[e] - sum[e]) <= gamma * magnitude[e], $"y[{e / outFeatures},{e % outFeatures}] {y[e]} vs {sum[e]} (bound {gamma * magnitude[e]:E2})");
        }
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void EachRowGetsTheSameBitsAloneAndAnywhereInABatch(int width, int outFeatures, int inFeatures, int blockSize, QuantType type, bool doubleQuant)
    {
        RequirePath(width);
        var weight = QuantizedTensor.Quantize(Random(outFeatures * inFeatures, 3, 0.1), [outFeatures, inFeatures], new QuantizationOptions(type, blockSize, doubleQuant));
        float[] x = Random(8 * inFeatures, 4);
        float[] all = Gemv(weight, x, 8, width);
        for (int batch = 1; batch <= 8; batch++)
        {
            // Rows 8 − batch … 7 of x as a batch of their own: each lands at a different place than in the batch of 8.
            int skip = 8 - batch;
            float[] part = Gemv(weight, x[(skip * inFeatures)..], batch, width);
            for (int r = 0; r < batch; r++)
            {
                Assert.Equal(
                    all.AsSpan((skip + r) * outFeatures, outFeatures).ToArray().Select(BitConverter.SingleToInt32Bits),
                    part.AsSpan(r * outFeatures, outFeatures).ToArray().Select(BitConverter.SingleToInt32Bits));
            }
        }
    }

    [Fact]
    public unsafe void APathThisCpuLacksIsRefused()
    {
        if (Avx512F.IsSupported)
        {
            Assert.Skip("this CPU has every GEMV path");
        }

        var weight = QuantizedTensor.Quantize(Random(4 * 32, 5), [4, 32]);
        var e = Assert.Throws<NotSupportedException>(() => Gemv(weight, Random(32, 6), 1, 512));
        Assert.Contains("512-bit", e.Message);
    }
}
