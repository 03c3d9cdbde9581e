using System.Runtime.Intrinsics.X86;

namespace QLoRA.Core.Tests.Quantization;

[Collection("KernelPaths")]
public class BlockwiseQuantizerTests
{
    // Every path is listed on every machine; a path this CPU lacks is reported as skipped with the reason.
    public static TheoryData<int> VectorWidths() => new() { 0, 256, 512 };

    private static void RequireWidth(int width)
    {
        if (width == 256 && !Avx2.IsSupported)
        {
            Assert.Skip("this CPU has no AVX2: the 256-bit kernel cannot run here");
        }

        if (width == 512 && !(Avx512F.IsSupported && Avx512BW.IsSupported))
        {
            Assert.Skip("this CPU has no AVX-512 F/BW: the 512-bit kernel cannot run here");
        }
    }

    private static T WithWidth<T>(int width, Func<T> body)
    {
        RequireWidth(width);
        int saved = FourBitKernels.VectorWidth;
        FourBitKernels.VectorWidth = width;
        try
        {
            return body();
        }
        finally
        {
            FourBitKernels.VectorWidth = saved;
        }
    }

    private static (byte[] Packed, float[] Absmax) Run(float[] values, int blockSize, QuantType type)
    {
        var packed = new byte[(values.Length + 1) / 2];
        var absmax = new float[(values.Length + blockSize - 1) / blockSize];
        BlockwiseQuantizer.Quantize(values, packed, absmax, type, blockSize);
        return (packed, absmax);
    }

    [Theory]
    [MemberData(nameof(VectorWidths))]
    public void EveryPathMatchesTheReferenceBitForBitForEveryBlockSizeAndType(int width)
    {
        foreach (QuantType type in new[] { QuantType.Nf4, QuantType.Fp4 })
        {
            foreach (int blockSize in TestSupport.AllBlockSizes)
            {
                // Lengths: a partial last block and an odd count, so tails are exercised.
                int n = (blockSize * 3) + 17;
                float[] values = TestSupport.Normal(n, seed: blockSize + (int)type, scale: 0.02);
                (int[] codes, float[] absmax) = Reference.QuantizeCodes(values, blockSize, type);
                (byte[] packed, float[] gotAbsmax) = WithWidth(width, () => Run(values, blockSize, type));
                Assert.Equal(absmax, gotAbsmax);
                Assert.Equal(Reference.Pack(codes, type), packed);
            }
        }
    }

    [Theory]
    [MemberData(nameof(VectorWidths))]
    public void EveryPathBreaksTiesAtTheThresholdsExactlyAsTheReference(int width)
    {
        // A block whose absmax is exactly 1 scales by exactly 1, so its values land on the thresholds themselves: each
        // threshold, and the float just above and below it. Random data almost never hits a tie; this block only does.
        foreach (QuantType type in new[] { QuantType.Nf4, QuantType.Fp4 })
        {
            float[] thresholds = type == QuantType.Nf4 ? Reference.Nf4Midpoints() : [.. Reference.Fp4Pivots, .. Reference.Fp4Pivots.Select(p => -p)];
            var values = new List<float> { 1f };
            foreach (float t in thresholds)
            {
                values.Add(t);
                values.Add(MathF.BitIncrement(t));
                values.Add(MathF.BitDecrement(t));
            }

            while (values.Count % 64 != 0)
            {
                values.Add(0.5f);
            }

            float[] block = [.. values];
            (int[] codes, float[] absmax) = Reference.QuantizeCodes(block, 64, type);
            Assert.All(absmax, a => Assert.Equal(1f, a));
            (byte[] packed, _) = WithWidth(width, () => Run(block, 64, type));
            Assert.Equal(Reference.Pack(codes, type), packed);
        }
    }

    [Theory]
    [MemberData(nameof(VectorWidths))]
    public void EveryPathDequantizesExactlyAsCodeTimesAbsmax(int width)
    {
        foreach (QuantType type in new[] { QuantType.Nf4, QuantType.Fp4 })
        {
            foreach (int blockSize in TestSupport.AllBlockSizes)
            {
                int n = (blockSize * 2) + 33;
                float[] values = TestSupport.Normal(n, seed: 7 * blockSize, scale: 3);
                (byte[] packed, float[] absmax) = Run(values, blockSize, type);
                float[] expected = Reference.Dequantize(packed, absmax, n, blockSize, type);
                float[] got = WithWidth(width, () =>
                {
                    var output = new float[n];
                    Array.Fill(output, float.NaN); // poison: every element must be written
                    BlockwiseDequantizer.Dequantize(packed, absmax, type, blockSize, output);
                    return output;
                });
                Assert.Equal(expected.Select(BitConverter.SingleToUInt32Bits), got.Select(BitConverter.SingleToUInt32Bits));
            }
        }
    }

    [Theory]
    [MemberData(nameof(VectorWidths))]
    public void Bf16AndF16InputsGiveTheSameCodesAsTheirFloat32Values(int width)
    {
        // Every type and block size, with a zero block (with -0.0) and a partial last block: the fused kernels read
        // bf16 and f32 as they lie, so each block-size/alignment case is a separate path to check.
        foreach (QuantType type in new[] { QuantType.Nf4, QuantType.Fp4 })
        {
            foreach (int blockSize in TestSupport.AllBlockSizes)
            {
                int n = (blockSize * 4) + 19;
                float[] raw = TestSupport.Normal(n, seed: 11 + blockSize + (int)type, scale: 0.03);
                Array.Clear(raw, blockSize, blockSize);
                raw[blockSize + 3] = -0f;
                BlockwiseQuantizerTestsBf16.Check(width, raw, blockSize, type, WithWidth);
            }
        }
    }

    [Theory]
    [MemberData(nameof(VectorWidths))]
    public void Bf16AndF16OutputsRoundTheFloat32ResultToNearestEven(int width)
    {
        float[] values = TestSupport.Normal(1000, seed: 5, scale: 0.7);
        (byte[] packed, float[] absmax) = Run(values, 128, QuantType.Nf4);
        float[] exact = Reference.Dequantize(packed, absmax, values.Length, 128, QuantType.Nf4);
        WithWidth(width, () =>
        {
            var bf16 = new BFloat16[values.Length];
            BlockwiseDequantizer.Dequantize(packed, absmax, QuantType.Nf4, 128, bf16);
            Assert.Equal(exact.Select(Reference.Bf16), bf16.Select(b => b.Bits));
            var f16 = new Half[values.Length];
            BlockwiseDequantizer.Dequantize(packed, absmax, QuantType.Nf4, 128, f16);
            Assert.Equal(exact.Select(x => (Half)x), f16);
            return 0;
        });
    }

    [Fact]
    public void HandComputedBlock()
    {
        // absmax 2: scaled values 1, -1, 0.25, -0.5, 0, 0.75, 0.1, -0.05 then zeros.
        var values = new float[32];
        float[] head = [2f, -2f, 0.5f, -1f, 0f, 1.5f, 0.2f, -0.1f];
        head.CopyTo(values, 0);
        (byte[] packed, float[] absmax) = Run(values, 32, QuantType.Nf4);
        Assert.Equal([2f], absmax);
        // NF4 codes: 1 -> 15, -1 -> 0, 0.25 -> 10 (0.2461), -0.5 -> 2 (-0.5251), 0 -> 7, 0.75 -> 14 (0.7230),
        //            0.1 -> 8 (0.0796), -0.05 -> 6 (-0.0911 vs 0: midpoint -0.0455, -0.05 is below it).
        Assert.Equal(new byte[] { 0xF0, 0xA2, 0x7E, 0x86 }, packed[..4]);
        Assert.All(packed[4..], b => Assert.Equal(0x77, b));

        (byte[] fp4, _) = Run(values, 32, QuantType.Fp4);
        // FP4: 1 -> 0011, -1 -> 1011, 0.25 -> 0111 (3/12), -0.5 -> 1101 (6/12), 0 -> 0000, 0.75 -> 0010 (8/12),
        //      0.1 -> 0110 (2/12 = 0.1667 vs 0.0052: pivot 0.0859), -0.05 -> 1001 (-0.0052).
        Assert.Equal(new byte[] { 0x3B, 0x7D, 0x02, 0x69 }, fp4[..4]);
    }

    [Fact]
    public void AllEqualBlocksUseTheEndCodes()
    {
        (byte[] packed, float[] absmax) = Run(Enumerable.Repeat(3f, 64).ToArray(), 64, QuantType.Nf4);
        Assert.Equal([3f], absmax);
        Assert.All(packed, b => Assert.Equal(0xFF, b));
        (packed, _) = Run(Enumerable.Repeat(-3f, 64).ToArray(), 64, QuantType.Nf4);
        Assert.All(packed, b => Assert.Equal(0x00, b));
        (packed, _) = Run(Enumerable.Repeat(-3f, 64).ToArray(), 64, QuantType.Fp4);
        Assert.All(packed, b => Assert.Equal(0xBB, b));
        float[] back = new float[64];
        BlockwiseDequantizer.Dequantize(packed, [3f], QuantType.Fp4, 64, back);
        Assert.All(back, v => Assert.Equal(-3f, v));
    }

    [Fact]
    public void ZeroBlockHasAbsmaxZeroTheZeroCodeAndDequantizesToZeroNotNaN()
    {
        float[] values = TestSupport.Normal(192, seed: 3);
        Array.Clear(values, 64, 64); // the middle block is all zeros (with a -0.0 in it)
        values[70] = -0f;
        foreach (QuantType type in new[] { QuantType.Nf4, QuantType.Fp4 })
        {
            (byte[] packed, float[] absmax) = Run(values, 64, type);
            Assert.Equal(0f, absmax[1]);
            byte zero = FourBitCodes.ZeroCode(type);
            Assert.All(packed[32..64], b => Assert.Equal((byte)((zero << 4) | zero), b));
            var back = new float[192];
            BlockwiseDequantizer.Dequantize(packed, absmax, type, 64, back);
            Assert.All(back[64..128], v => Assert.Equal(0f, v));
            Assert.DoesNotContain(back, float.IsNaN);
        }
    }

    [Theory]
    [InlineData(1)]
    [InlineData(3)]
    [InlineData(31)]
    [InlineData(65)]
    [InlineData(127)]
    [InlineData(4097)]
    public void OddLengthsPadTheLastLowNibbleWithTheZeroCode(int n)
    {
        float[] values = TestSupport.Normal(n, seed: n);
        foreach (QuantType type in new[] { QuantType.Nf4, QuantType.Fp4 })
        {
            (byte[] packed, float[] absmax) = Run(values, 64, type);
            Assert.Equal((n + 1) / 2, packed.Length);
            Assert.Equal(FourBitCodes.ZeroCode(type), packed[^1] & 15);
            (int[] codes, _) = Reference.QuantizeCodes(values, 64, type);
            Assert.Equal(codes[^1], packed[^1] >> 4);
            var back = new float[n];
            BlockwiseDequantizer.Dequantize(packed, absmax, type, 64, back);
            Assert.Equal(Reference.Dequantize(packed, absmax, n, 64, type), back);
        }
    }

    [Fact]
    public void LargeTensorsSplitAcrossCoresGiveTheSameResultAsTheReference()
    {
        float[] values = TestSupport.Normal((1 << 20) + 5, seed: 99, scale: 0.05);
        (byte[] packed, float[] absmax) = Run(values, 64, QuantType.Nf4);
        (int[] codes, float[] refAbsmax) = Reference.QuantizeCodes(values, 64, QuantType.Nf4);
        Assert.Equal(refAbsmax, absmax);
        Assert.Equal(Reference.Pack(codes, QuantType.Nf4), packed);
    }

    [Theory]
    [InlineData(float.NaN)]
    [InlineData(float.PositiveInfinity)]
    [InlineData(float.NegativeInfinity)]
    public void NonFiniteInputIsAClearErrorNamingTheElement(float bad)
    {
        float[] values = TestSupport.Normal(300_000, seed: 1);
        values[200_001] = bad;
        var packed = new byte[150_000];
        var absmax = new float[4688];
        var e = Assert.Throws<NonFiniteValueException>(() => BlockwiseQuantizer.Quantize(values, packed, absmax, QuantType.Nf4, 64, "model.layers.0.mlp.up_proj.weight"));
        Assert.Equal(200_001, e.ElementIndex);
        Assert.Contains("model.layers.0.mlp.up_proj.weight", e.Message);
        Assert.Contains("200001", e.Message);
    }

    [Theory]
    [MemberData(nameof(VectorWidths))]
    public void NonFiniteBf16InputIsReportedAtItsElementOnEveryPath(int width)
    {
        float[] values = TestSupport.Normal(4096, seed: 2);
        foreach (float bad in new[] { float.NaN, float.PositiveInfinity, float.NegativeInfinity })
        {
            values[3001] = bad;
            BFloat16[] bf16 = TestSupport.ToBf16(values);
            var e = WithWidth(width, () => Assert.Throws<NonFiniteValueException>(() => BlockwiseQuantizer.Quantize(bf16, new byte[2048], new float[64], QuantType.Fp4, 64, "w")));
            Assert.Equal(3001, e.ElementIndex);
        }
    }

    [Theory]
    [InlineData(0)]
    [InlineData(16)]
    [InlineData(48)]
    [InlineData(8192)]
    [InlineData(-64)]
    public void UnsupportedBlockSizesAreRejected(int blockSize)
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => BlockwiseQuantizer.Quantize(new float[64], new byte[32], new float[64], QuantType.Nf4, blockSize));
    }

    [Fact]
    public void ShortDestinationsAreRejected()
    {
        Assert.Throws<ArgumentException>(() => BlockwiseQuantizer.Quantize(new float[65], new byte[32], new float[2], QuantType.Nf4, 64));
        Assert.Throws<ArgumentException>(() => BlockwiseQuantizer.Quantize(new float[65], new byte[33], new float[1], QuantType.Nf4, 64));
        Assert.Throws<ArgumentException>(() => BlockwiseDequantizer.Dequantize(new byte[32], new float[2], QuantType.Nf4, 64, new float[65]));
    }
}

/// <summary>bf16/f16/f32 inputs of the same values must give the same codes and absmax as the float64-free reference.</summary>
internal static class BlockwiseQuantizerTestsBf16
{
    public static void Check(int width, float[] raw, int blockSize, QuantType type, Func<int, Func<int>, int> withWidth)
    {
        BFloat16[] bf16 = TestSupport.ToBf16(raw);
        float[] bf16AsFloat = bf16.Select(b => b.ToSingle()).ToArray();
        Half[] f16 = raw.Select(x => (Half)x).ToArray();
        float[] f16AsFloat = f16.Select(h => (float)h).ToArray();
        int n = raw.Length;
        withWidth(width, () =>
        {
            foreach ((float[] exact, Action<byte[], float[]> quantize) in new (float[], Action<byte[], float[]>)[]
            {
                (bf16AsFloat, (p, a) => BlockwiseQuantizer.Quantize(bf16, p, a, type, blockSize)),
                (f16AsFloat, (p, a) => BlockwiseQuantizer.Quantize(f16, p, a, type, blockSize)),
                (raw, (p, a) => BlockwiseQuantizer.Quantize(raw, p, a, type, blockSize)),
            })
            {
                var packed = new byte[(n + 1) / 2];
                var absmax = new float[(n + blockSize - 1) / blockSize];
                Array.Fill(packed, (byte)0xA5); // poison: every byte must be written
                quantize(packed, absmax);
                (int[] codes, float[] refAbsmax) = Reference.QuantizeCodes(exact, blockSize, type);
                Assert.Equal(refAbsmax, absmax);
                Assert.Equal(Reference.Pack(codes, type), packed);
            }

            return 0;
        });
    }
}
