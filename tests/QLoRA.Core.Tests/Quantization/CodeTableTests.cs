namespace QLoRA.Core.Tests.Quantization;

public class CodeTableTests
{
    [Fact]
    public void Nf4TableIsThePublishedLiteralsInFloat32()
    {
        ReadOnlySpan<float> table = FourBitCodes.Values(QuantType.Nf4);
        Assert.Equal(16, table.Length);
        for (int i = 0; i < 16; i++)
        {
            Assert.Equal(BitConverter.SingleToUInt32Bits((float)Reference.Nf4[i]), BitConverter.SingleToUInt32Bits(table[i]));
        }

        // Hand-checked values.
        Assert.Equal(-1.0f, table[0]);
        Assert.Equal(0.0f, table[7]);
        Assert.Equal(0.07958029955625534f, table[8]);
        Assert.Equal(1.0f, table[15]);
    }

    [Fact]
    public void Fp4TableIsInBitPatternOrderDividedByTwelve()
    {
        ReadOnlySpan<float> table = FourBitCodes.Values(QuantType.Fp4);
        float[] expected = [0f, 0.0625f / 12, 8f / 12, 1f, 4f / 12, 6f / 12, 2f / 12, 3f / 12, -0f, -0.0625f / 12, -8f / 12, -1f, -4f / 12, -6f / 12, -2f / 12, -3f / 12];
        for (int i = 0; i < 16; i++)
        {
            Assert.Equal(BitConverter.SingleToUInt32Bits(expected[i]), BitConverter.SingleToUInt32Bits(table[i]));
        }

        Assert.True(float.IsNegative(table[8]), "pattern 0b1000 is -0.0");
        Assert.Equal(0.5f, table[5]);
        Assert.Equal(-0.25f, table[15]);
    }

    [Fact]
    public void Nf4MidpointsAreBitsandbytesPivots()
    {
        float[] expected = Reference.Nf4Midpoints();
        Assert.Equal(expected, FourBitCodes.Nf4Midpoints.ToArray());
        Assert.Equal(0.03979015f, FourBitCodes.Nf4Midpoints[7]);
        // bitsandbytes' dQuantizeNF4 pivots, as its source spells them.
        float[] bnbPivots =
        [
            -0.8480964004993439f, -0.6106329262256622f, -0.4599952697753906f, -0.33967943489551544f,
            -0.23460740596055984f, -0.13791173323988914f, -0.045525018125772476f, 0.03979014977812767f,
            0.1202552504837513f, 0.2035212516784668f, 0.2920137718319893f, 0.3893125355243683f,
            0.5016634166240692f, 0.6427869200706482f, 0.8614784181118011f,
        ];
        Assert.Equal(bnbPivots, FourBitCodes.Nf4Midpoints.ToArray());

        // The first pivot is where rounding the double midpoint straight to float32 would land one ulp off.
        float doubleRounded = (float)((Reference.Nf4[0] + Reference.Nf4[1]) / 2.0);
        Assert.Equal(MathF.BitIncrement(FourBitCodes.Nf4Midpoints[0]), doubleRounded);
    }

    [Fact]
    public void EveryNf4MidpointTieTakesTheLowerCodeAndTheNextFloatTheUpper()
    {
        float[] mid = Reference.Nf4Midpoints();
        for (int i = 0; i < 15; i++)
        {
            Assert.Equal(i, FourBitCodes.QuantizeNf4(mid[i]));
            Assert.Equal(i + 1, FourBitCodes.QuantizeNf4(MathF.BitIncrement(mid[i])));
            Assert.Equal(i, FourBitCodes.QuantizeNf4(MathF.BitDecrement(mid[i])));
        }
    }

    [Fact]
    public void EveryFp4PivotTieTakesTheSmallerMagnitudeOnBothSides()
    {
        int[] ascendingPatterns = [0, 1, 6, 7, 4, 5, 2, 3];
        for (int i = 0; i < 7; i++)
        {
            float p = Reference.Fp4Pivots[i];
            Assert.Equal(ascendingPatterns[i], FourBitCodes.QuantizeFp4(p));
            Assert.Equal(ascendingPatterns[i + 1], FourBitCodes.QuantizeFp4(MathF.BitIncrement(p)));
            Assert.Equal(ascendingPatterns[i] | 8, FourBitCodes.QuantizeFp4(-p));
            Assert.Equal(ascendingPatterns[i + 1] | 8, FourBitCodes.QuantizeFp4(-MathF.BitIncrement(p)));
        }
    }

    [Fact]
    public void SignedZerosAndTinyValues()
    {
        Assert.Equal(7, FourBitCodes.QuantizeNf4(0f));
        Assert.Equal(7, FourBitCodes.QuantizeNf4(-0f));
        Assert.Equal(0, FourBitCodes.QuantizeFp4(0f));
        Assert.Equal(0, FourBitCodes.QuantizeFp4(-0f));          // -0 < 0 is false: no sign bit, as bitsandbytes
        Assert.Equal(8, FourBitCodes.QuantizeFp4(-1e-6f));       // tiny negative keeps its sign: -0
        Assert.Equal(1, FourBitCodes.QuantizeFp4(0.004f));       // 0.0625/12 = 0.0052 is nearest
        Assert.Equal(7, FourBitCodes.ZeroCode(QuantType.Nf4));
        Assert.Equal(0, FourBitCodes.ZeroCode(QuantType.Fp4));
    }

    [Fact]
    public void EndValuesMapToEndCodesAndOutOfRangeClamps()
    {
        Assert.Equal(0, FourBitCodes.QuantizeNf4(-1f));
        Assert.Equal(15, FourBitCodes.QuantizeNf4(1f));
        Assert.Equal(0, FourBitCodes.QuantizeNf4(-7f));
        Assert.Equal(15, FourBitCodes.QuantizeNf4(7f));
        Assert.Equal(0b0011, FourBitCodes.QuantizeFp4(1f));
        Assert.Equal(0b1011, FourBitCodes.QuantizeFp4(-1f));
    }

    [Fact]
    public void ExhaustiveAgreementWithLinearScanOnAFineGrid()
    {
        for (int i = -120_000; i <= 120_000; i++)
        {
            float x = i / 100_000f;
            Assert.Equal(Reference.QuantizeNf4(x), FourBitCodes.QuantizeNf4(x));
            Assert.Equal(Reference.QuantizeFp4(x), FourBitCodes.QuantizeFp4(x));
        }
    }
}
