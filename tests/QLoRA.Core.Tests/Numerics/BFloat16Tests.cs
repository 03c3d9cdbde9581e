namespace QLoRA.Core.Tests.Numerics;

public class BFloat16Tests
{
    [Theory]
    [InlineData(1.0f, 0x3F80)]
    [InlineData(-2.0f, 0xC000)]
    [InlineData(0.0f, 0x0000)]
    [InlineData(-0.0f, 0x8000)]
    [InlineData(float.PositiveInfinity, 0x7F80)]
    [InlineData(3.0e38f, 0x7F62)]
    [InlineData(3.4028235e38f, 0x7F80)] // float max rounds up to infinity
    public void KnownValues(float value, int bits)
    {
        Assert.Equal((ushort)bits, BFloat16.RoundToBits(value));
    }

    [Fact]
    public void TiesGoToEven()
    {
        // 1 + 2^-8 is exactly halfway between bf16 1.0 (even) and 1 + 2^-7 (odd): rounds down.
        Assert.Equal(0x3F80, BFloat16.RoundToBits(1f + (1f / 256)));
        // 1 + 3·2^-8 is halfway between 1 + 2^-7 (odd) and 1 + 2^-6 (even): rounds up.
        Assert.Equal(0x3F82, BFloat16.RoundToBits(1f + (3f / 256)));
        Assert.Equal(0x3F81, BFloat16.RoundToBits(MathF.BitIncrement(1f + (1f / 256))));
    }

    [Fact]
    public void OverflowRoundsToInfinityOnlyFromTheHalfwayPoint()
    {
        foreach (uint bits in new uint[] { 0x7F7F_7FFF, 0x7F7F_8000, 0x7F7F_FFFF, 0xFF7F_8000 })
        {
            float x = BitConverter.UInt32BitsToSingle(bits);
            Assert.Equal(Quantization.Reference.Bf16(x), BFloat16.RoundToBits(x));
        }

        Assert.Equal(0x7F7F, BFloat16.RoundToBits(BitConverter.UInt32BitsToSingle(0x7F7F_7FFF)));
        Assert.Equal(0x7F80, BFloat16.RoundToBits(BitConverter.UInt32BitsToSingle(0x7F7F_8000)));
    }

    [Fact]
    public void NaNStaysNaN()
    {
        Assert.True(float.IsNaN(BFloat16.FromSingle(float.NaN).ToSingle()));
        // A NaN whose payload sits only in the low bits must not round to infinity.
        float lowPayloadNaN = BitConverter.UInt32BitsToSingle(0x7F80_0001);
        Assert.True(float.IsNaN(BFloat16.FromSingle(lowPayloadNaN).ToSingle()));
    }

    [Fact]
    public void SpanConversionsMatchTheScalarReferenceOnRandomBits()
    {
        var rng = new Random(6);
        var values = new float[100_003];
        for (int i = 0; i < values.Length; i++)
        {
            values[i] = BitConverter.UInt32BitsToSingle((uint)rng.NextInt64(0, 1L << 32));
        }

        var bf16 = new BFloat16[values.Length];
        BFloat16Conversions.FromSingle(values, bf16);
        for (int i = 0; i < values.Length; i++)
        {
            if (float.IsNaN(values[i]))
            {
                Assert.True(float.IsNaN(bf16[i].ToSingle()));
            }
            else
            {
                Assert.Equal(Quantization.Reference.Bf16(values[i]), bf16[i].Bits);
            }
        }

        var back = new float[values.Length];
        BFloat16Conversions.ToSingle(bf16, back);
        for (int i = 0; i < values.Length; i++)
        {
            Assert.Equal((uint)bf16[i].Bits << 16, BitConverter.SingleToUInt32Bits(back[i]));
        }
    }
}
