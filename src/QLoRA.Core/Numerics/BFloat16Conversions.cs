using System.Runtime.Intrinsics;

namespace QLoRA.Core.Numerics;

/// <summary>Vectorized span conversions between <see cref="float"/> and <see cref="BFloat16"/>.</summary>
public static class BFloat16Conversions
{
    /// <summary>Widens each bf16 value to the exactly equal float.</summary>
    /// <exception cref="ArgumentException"><paramref name="destination"/> is shorter than <paramref name="source"/>.</exception>
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
    public static void ToSingle(ReadOnlySpan<BFloat16> source, Span<float> destination)
    {
        if (destination.Length < source.Length)
        {
            throw new ArgumentException("Destination is too short.", nameof(destination));
        }

        ReadOnlySpan<ushort> bits = System.Runtime.InteropServices.MemoryMarshal.Cast<BFloat16, ushort>(source);
        Span<uint> wide = System.Runtime.InteropServices.MemoryMarshal.Cast<float, uint>(destination);
        int i = 0;
        if (Vector256.IsHardwareAccelerated)
        {
            for (; i <= bits.Length - Vector256<ushort>.Count; i += Vector256<ushort>.Count)
            {
                var v = Vector256.Create(bits.Slice(i, Vector256<ushort>.Count));
                (Vector256<uint> lo, Vector256<uint> hi) = Vector256.Widen(v);
                (lo << 16).CopyTo(wide.Slice(i));
                (hi << 16).CopyTo(wide.Slice(i + Vector256<uint>.Count));
            }
        }

        for (; i < bits.Length; i++)
        {
            wide[i] = (uint)bits[i] << 16;
        }
    }

    /// <summary>Rounds each float to the nearest bf16 (ties to even; NaN stays a quiet NaN).</summary>
    /// <exception cref="ArgumentException"><paramref name="destination"/> is shorter than <paramref name="source"/>.</exception>
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
    public static void FromSingle(ReadOnlySpan<float> source, Span<BFloat16> destination)
    {
        if (destination.Length < source.Length)
        {
            throw new ArgumentException("Destination is too short.", nameof(destination));
        }

        ReadOnlySpan<uint> bits = System.Runtime.InteropServices.MemoryMarshal.Cast<float, uint>(source);
        Span<ushort> narrow = System.Runtime.InteropServices.MemoryMarshal.Cast<BFloat16, ushort>(destination);
        int i = 0;
        if (Vector256.IsHardwareAccelerated)
        {
            for (; i <= bits.Length - (2 * Vector256<uint>.Count); i += 2 * Vector256<uint>.Count)
            {
                Vector256<uint> lo = RoundToBf16Bits(Vector256.Create(bits.Slice(i, Vector256<uint>.Count)));
                Vector256<uint> hi = RoundToBf16Bits(Vector256.Create(bits.Slice(i + Vector256<uint>.Count, Vector256<uint>.Count)));
                Vector256.Narrow(lo, hi).CopyTo(narrow.Slice(i));
            }
        }

        for (; i < bits.Length; i++)
        {
            narrow[i] = BFloat16.RoundToBits(BitConverter.UInt32BitsToSingle(bits[i]));
        }
    }

    /// <summary>Round-to-nearest-even of float bits to bf16 bits (in the low 16 bits of each lane).</summary>
    internal static Vector256<uint> RoundToBf16Bits(Vector256<uint> bits)
    {
        Vector256<uint> rounded = (bits + (Vector256.Create(0x7FFFu) + ((bits >> 16) & Vector256<uint>.One))) >> 16;
        Vector256<uint> isNan = Vector256.GreaterThan(bits & Vector256.Create(0x7FFF_FFFFu), Vector256.Create(0x7F80_0000u));
        Vector256<uint> quietNan = (bits >> 16) | Vector256.Create(0x0040u);
        return Vector256.ConditionalSelect(isNan, quietNan, rounded);
    }

    /// <summary>Round-to-nearest-even of float bits to bf16 bits (in the low 16 bits of each lane).</summary>
    internal static Vector512<uint> RoundToBf16Bits(Vector512<uint> bits)
    {
        Vector512<uint> rounded = (bits + (Vector512.Create(0x7FFFu) + ((bits >> 16) & Vector512<uint>.One))) >> 16;
        Vector512<uint> isNan = Vector512.GreaterThan(bits & Vector512.Create(0x7FFF_FFFFu), Vector512.Create(0x7F80_0000u));
        Vector512<uint> quietNan = (bits >> 16) | Vector512.Create(0x0040u);
        return Vector512.ConditionalSelect(isNan, quietNan, rounded);
    }
}
