using ILGPU;

namespace QLoRA.Runtime.Kernels;

/// <summary>
/// How a kernel reads and writes one element of a compute dtype: every kernel loads to float32, computes and
/// accumulates in float32, and stores back (bf16 and f16 round to nearest even). Implemented by empty structs so
/// that ILGPU specializes each kernel per dtype (no branches or calls at run time).
/// </summary>
/// <typeparam name="T">The storage type: float for F32, ushort bits for BF16 and F16.</typeparam>
internal interface IElement<T>
    where T : unmanaged
{
    /// <summary>The element as float32 (exact for all three dtypes).</summary>
    float Load(T value);

    /// <summary>float32 rounded to the dtype (nearest even; NaN stays NaN, overflow becomes ±Inf).</summary>
    T Store(float value);

    /// <summary>Elements in one 16-byte vector (4 for F32, 8 for BF16/F16).</summary>
    int PerVector { get; }

    /// <summary>Element <paramref name="index"/> of a 16-byte vector of elements (little-endian), as float32.</summary>
    float FromVector(UInt4 vector, int index);
}

/// <summary>float32 elements.</summary>
internal readonly struct F32Element : IElement<float>
{
    public int PerVector => 4;

    public float Load(float value) => value;

    public float Store(float value) => value;

    public float FromVector(UInt4 vector, int index) => Interop.IntAsFloat(index == 0 ? vector.X : index == 1 ? vector.Y : index == 2 ? vector.Z : vector.W);
}

/// <summary>Half-word access to 16-byte vectors of 16-bit elements.</summary>
internal static class HalfWords
{
    public static ushort Get(UInt4 vector, int index)
    {
        int word = index >> 1;
        uint bits = word == 0 ? vector.X : word == 1 ? vector.Y : word == 2 ? vector.Z : vector.W;
        return (ushort)((index & 1) == 0 ? bits & 0xFFFF : bits >> 16);
    }
}

/// <summary>bfloat16 elements: the upper half of a float32.</summary>
internal readonly struct Bf16Element : IElement<ushort>, IMmaHalf
{
    public int PerVector => 8;

    public bool IsF16 => false;

    public float FromVector(UInt4 vector, int index) => Load(HalfWords.Get(vector, index));

    public float Load(ushort value) => Interop.IntAsFloat((uint)value << 16);

    public ushort Store(float value)
    {
        uint bits = Interop.FloatAsInt(value);
        if ((bits & 0x7FFFFFFFu) > 0x7F800000u)
        {
            return (ushort)((bits >> 16) | 0x40u); // quiet the NaN; keep its sign
        }

        return (ushort)((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
    }
}

/// <summary>IEEE binary16 elements, converted with integer operations (identical on every accelerator).</summary>
internal readonly struct F16Element : IElement<ushort>, IMmaHalf
{
    public int PerVector => 8;

    public bool IsF16 => true;

    public float FromVector(UInt4 vector, int index) => Load(HalfWords.Get(vector, index));

    public float Load(ushort value)
    {
        uint sign = ((uint)value & 0x8000u) << 16;
        uint exponent = ((uint)value >> 10) & 0x1Fu;
        uint mantissa = (uint)value & 0x3FFu;
        if (exponent == 0x1Fu)
        {
            return Interop.IntAsFloat(sign | 0x7F800000u | (mantissa << 13));
        }

        if (exponent == 0)
        {
            // Zero or subnormal: mantissa × 2⁻²⁴, exact in float32.
            float magnitude = mantissa * 5.9604644775390625e-8f;
            return sign != 0 ? -magnitude : magnitude;
        }

        return Interop.IntAsFloat(sign | ((exponent + 112u) << 23) | (mantissa << 13));
    }

    public ushort Store(float value)
    {
        uint bits = Interop.FloatAsInt(value);
        uint sign = (bits >> 16) & 0x8000u;
        uint magnitude = bits & 0x7FFFFFFFu;
        if (magnitude >= 0x7F800000u)
        {
            return (ushort)(sign | (magnitude > 0x7F800000u ? 0x7E00u : 0x7C00u));
        }

        if (magnitude >= 0x477FF000u)
        {
            return (ushort)(sign | 0x7C00u); // ≥ 65520 rounds past the largest half (65504)
        }

        if (magnitude >= 0x38800000u)
        {
            // Normal: rebias the exponent (127 → 15) and round the 13 dropped mantissa bits to nearest even.
            return (ushort)(sign | ((magnitude - 0x38000000u + 0xFFFu + ((magnitude >> 13) & 1u)) >> 13));
        }

        uint exponent = magnitude >> 23;
        if (exponent < 102)
        {
            return (ushort)sign; // below half the smallest subnormal (2⁻²⁵): rounds to zero
        }

        // Subnormal: the 24-bit significand in units of 2⁻²⁴, rounded to nearest even.
        uint significand = (magnitude & 0x7FFFFFu) | 0x800000u;
        int shift = 126 - (int)exponent;
        uint result = significand >> shift;
        uint remainder = significand & ((1u << shift) - 1u);
        uint halfway = 1u << (shift - 1);
        if (remainder > halfway || (remainder == halfway && (result & 1u) != 0))
        {
            result++;
        }

        return (ushort)(sign | result);
    }
}
