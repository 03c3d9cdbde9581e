using System.Globalization;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace QLoRA.Core.Quantization;

/// <summary>
/// The NF4 and FP4 code tables of bitsandbytes and the decision thresholds that map a value in [-1, 1]
/// to its 4-bit code.
/// </summary>
/// <remarks>
/// <para>NF4: the 16 codes are sorted, so the code of <c>x</c> is the number of thresholds strictly below it
/// (an exact tie takes the lower code). Threshold <c>i</c> is the midpoint <c>(c[i] + c[i+1]) / 2</c> computed in
/// double from the published literals, written as its shortest decimal and rounded once to float32 — exactly the
/// float literals of bitsandbytes' <c>dQuantizeNF4</c>. (Rounding the double straight to float32 would differ by
/// one ulp at the first threshold, −0.8480964, which sits on a float32 tie.)</para>
/// <para>FP4 is sign-magnitude: bit 3 is set when <c>x &lt; 0</c> (so −0.0 and +0.0 both take code 0), and the
/// magnitude is placed among {0, 0.0625, 2, 3, 4, 6, 8, 12} / 12 by the pivots bitsandbytes'
/// <c>dQuantizeFP4</c> uses (its decimal literals, which differ from exact midpoints by a few ulps for
/// 0.00260417, 0.4166667 and 0.583333); we keep them so our codes are bit-identical to bitsandbytes'.</para>
/// </remarks>
public static class FourBitCodes
{
    // NF4 literals exactly as published by bitsandbytes (QLoRA paper, Appendix E).
    private static readonly double[] Nf4Literals =
    [
        -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
        -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
        0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
        0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
    ];

    // FP4 values by bit pattern, before the division by 12 (bitsandbytes' get_4bit_type("fp4")).
    private static readonly float[] Fp4Unscaled = [0f, 0.0625f, 8f, 12f, 4f, 6f, 2f, 3f, -0f, -0.0625f, -8f, -12f, -4f, -6f, -2f, -3f];

    private static readonly float[] Nf4Table = BuildNf4Table();
    private static readonly float[] Fp4Table = BuildFp4Table();
    private static readonly float[] Nf4Thresholds = BuildNf4Thresholds();

    // Magnitude pivots of dQuantizeFP4 (ascending) and the bit pattern of each magnitude bucket.
    private static readonly float[] Fp4Pivots = [0.00260417f, 0.0859375f, 0.20833333f, 0.29166667f, 0.4166667f, 0.583333f, 0.8333333f];
    private static readonly byte[] Fp4MagnitudeCodes = [0b000, 0b001, 0b110, 0b111, 0b100, 0b101, 0b010, 0b011];

    /// <summary>The 16 code values of <paramref name="type"/> indexed by 4-bit pattern (float32, as bitsandbytes' <c>quant_map</c>).</summary>
    public static ReadOnlySpan<float> Values(QuantType type) => type switch
    {
        QuantType.Nf4 => Nf4Table,
        QuantType.Fp4 => Fp4Table,
        _ => throw new ArgumentOutOfRangeException(nameof(type), type, null),
    };

    /// <summary>The 15 ascending NF4 decision thresholds (midpoints between adjacent codes).</summary>
    public static ReadOnlySpan<float> Nf4Midpoints => Nf4Thresholds;

    /// <summary>The 7 ascending FP4 magnitude pivots used by bitsandbytes.</summary>
    public static ReadOnlySpan<float> Fp4MagnitudePivots => Fp4Pivots;

    /// <summary>FP4 magnitude bucket (0..7, ascending magnitude) to its 3-bit pattern.</summary>
    internal static ReadOnlySpan<byte> Fp4BucketCodes => Fp4MagnitudeCodes;

    /// <summary>The code that represents 0.0: NF4 7, FP4 0. Zero blocks and the padding nibble of odd lengths use it.</summary>
    public static byte ZeroCode(QuantType type) => type switch
    {
        QuantType.Nf4 => 7,
        QuantType.Fp4 => 0,
        _ => throw new ArgumentOutOfRangeException(nameof(type), type, null),
    };

    /// <summary>The 4-bit code of a value already scaled by 1/absmax (expected in [-1, 1]; values outside clamp to the end codes).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static byte Quantize(QuantType type, float scaled) => type == QuantType.Nf4 ? QuantizeNf4(scaled) : QuantizeFp4(scaled);

    /// <summary>The NF4 code of a scaled value: the number of thresholds strictly below it.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static byte QuantizeNf4(float scaled)
    {
        // Branch-free tree: each comparison picks the half, its 0/1 result shifted into the code.
        ref float t = ref MemoryMarshal.GetArrayDataReference(Nf4Thresholds);
        int code = Bit(scaled > Unsafe.Add(ref t, 7)) << 3;
        code |= Bit(scaled > Unsafe.Add(ref t, code + 3)) << 2;
        code |= Bit(scaled > Unsafe.Add(ref t, code + 1)) << 1;
        code |= Bit(scaled > Unsafe.Add(ref t, code));
        return (byte)code;
    }

    /// <summary>The FP4 code of a scaled value (sign-magnitude, bitsandbytes pivots).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static byte QuantizeFp4(float scaled)
    {
        int sign = Bit(scaled < 0f) << 3;
        float magnitude = MathF.Abs(scaled);
        ref float p = ref MemoryMarshal.GetArrayDataReference(Fp4Pivots);
        int bucket = Bit(magnitude > Unsafe.Add(ref p, 3)) << 2;
        bucket |= Bit(magnitude > Unsafe.Add(ref p, bucket + 1)) << 1;
        bucket |= Bit(magnitude > Unsafe.Add(ref p, bucket));
        return (byte)(Unsafe.Add(ref MemoryMarshal.GetArrayDataReference(Fp4MagnitudeCodes), bucket) | sign);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static int Bit(bool condition) => Unsafe.BitCast<bool, byte>(condition);

    private static float[] BuildNf4Table()
    {
        var table = new float[16];
        for (int i = 0; i < 16; i++)
        {
            table[i] = (float)Nf4Literals[i];
        }

        return table;
    }

    private static float[] BuildFp4Table()
    {
        // bitsandbytes divides the float32 tensor by its absolute maximum (12) in float32.
        var table = new float[16];
        for (int i = 0; i < 16; i++)
        {
            table[i] = Fp4Unscaled[i] / 12f;
        }

        return table;
    }

    private static float[] BuildNf4Thresholds()
    {
        var thresholds = new float[15];
        for (int i = 0; i < 15; i++)
        {
            double midpoint = (Nf4Literals[i] + Nf4Literals[i + 1]) / 2.0;
            thresholds[i] = float.Parse(midpoint.ToString("R", CultureInfo.InvariantCulture), CultureInfo.InvariantCulture);
        }

        return thresholds;
    }
}
