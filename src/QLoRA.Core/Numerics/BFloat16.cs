using System.Runtime.CompilerServices;

namespace QLoRA.Core.Numerics;

/// <summary>
/// A bfloat16 value (1 sign bit, 8 exponent bits, 7 mantissa bits) stored as its raw 16 bits,
/// laid out exactly as safetensors' <c>BF16</c> and PyTorch's <c>torch.bfloat16</c>.
/// </summary>
/// <remarks>
/// Conversion from <see cref="float"/> rounds to nearest, ties to even, as PyTorch does; NaN stays NaN
/// (quiet). Conversion to <see cref="float"/> is exact.
/// </remarks>
public readonly struct BFloat16 : IEquatable<BFloat16>
{
    /// <summary>The raw bit pattern.</summary>
    public ushort Bits { get; }

    private BFloat16(ushort bits) => Bits = bits;

    /// <summary>Wraps a raw bit pattern.</summary>
    public static BFloat16 FromBits(ushort bits) => new(bits);

    /// <summary>Converts a <see cref="float"/>, rounding to nearest even.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static BFloat16 FromSingle(float value) => new(RoundToBits(value));

    /// <summary>The bf16 bits nearest to <paramref name="value"/> (ties to even; NaN becomes a quiet NaN).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ushort RoundToBits(float value)
    {
        uint bits = BitConverter.SingleToUInt32Bits(value);
        if ((bits & 0x7FFF_FFFFu) > 0x7F80_0000u)
        {
            return (ushort)((bits >> 16) | 0x0040u); // keep sign, force a quiet NaN
        }

        uint roundingBias = 0x7FFFu + ((bits >> 16) & 1u);
        return (ushort)((bits + roundingBias) >> 16);
    }

    /// <summary>Widens bf16 bits to the exactly equal <see cref="float"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float BitsToSingle(ushort bits) => BitConverter.UInt32BitsToSingle((uint)bits << 16);

    /// <summary>The exactly equal <see cref="float"/>.</summary>
    public float ToSingle() => BitsToSingle(Bits);

    /// <summary>Converts to float exactly.</summary>
    public static explicit operator float(BFloat16 value) => value.ToSingle();

    /// <summary>Converts from float, rounding to nearest even.</summary>
    public static explicit operator BFloat16(float value) => FromSingle(value);

    /// <inheritdoc />
    public bool Equals(BFloat16 other) => Bits == other.Bits;

    /// <inheritdoc />
    public override bool Equals(object? obj) => obj is BFloat16 other && Equals(other);

    /// <inheritdoc />
    public override int GetHashCode() => Bits;

    /// <summary>Bitwise equality.</summary>
    public static bool operator ==(BFloat16 left, BFloat16 right) => left.Equals(right);

    /// <summary>Bitwise inequality.</summary>
    public static bool operator !=(BFloat16 left, BFloat16 right) => !left.Equals(right);

    /// <inheritdoc />
    public override string ToString() => ToSingle().ToString(System.Globalization.CultureInfo.InvariantCulture);
}
