using ILGPU;
using ILGPU.Runtime;

namespace QLoRA.Runtime.Kernels;

/// <summary>
/// NF4/FP4 dequantization, grid-stride: each thread step takes 16 packed bytes (32 values, one vector load) of a
/// block, looks codes up in the 16-entry table, scales by the block's absmax in float32 and stores 64 (bf16) or 128
/// (f32) bytes as 16-byte vectors. The last partial chunk is done element by element. Bit-identical to
/// QLoRA.Core's CPU dequantizer and to bitsandbytes.
/// </summary>
internal static class DequantizeKernels
{
    public static void ToBf16<TAbsmax>(ArrayView<UInt4> packed, TAbsmax absmax, ArrayView<float> table, long count, int blockShift, ArrayView<UInt4> output, ArrayView<ushort> outputTail)
        where TAbsmax : struct, IAbsmaxSource
    {
        table = CodeTable.ToShared(table);
        long chunks = (count + 31) >> 5;
        long stride = (long)Grid.DimX * Group.DimX;
        for (long chunk = Grid.GlobalIndex.X; chunk < chunks; chunk += stride)
        {
            long first = chunk * 32;
            float scale = absmax.Get(first >> blockShift);
            UInt4 bytes = packed[chunk];
            if (first + 32 <= count)
            {
                output[(chunk * 4) + 0] = Pairs(bytes.X, table, scale);
                output[(chunk * 4) + 1] = Pairs(bytes.Y, table, scale);
                output[(chunk * 4) + 2] = Pairs(bytes.Z, table, scale);
                output[(chunk * 4) + 3] = Pairs(bytes.W, table, scale);
            }
            else
            {
                for (long i = first; i < count; i++)
                {
                    outputTail[i] = (ushort)ToBf16(table[Code(bytes, (int)(i - first))] * scale);
                }
            }
        }
    }

    public static void ToF32<TAbsmax>(ArrayView<UInt4> packed, TAbsmax absmax, ArrayView<float> table, long count, int blockShift, ArrayView<UInt4> output, ArrayView<float> outputTail)
        where TAbsmax : struct, IAbsmaxSource
    {
        table = CodeTable.ToShared(table);
        long chunks = (count + 31) >> 5;
        long stride = (long)Grid.DimX * Group.DimX;
        for (long chunk = Grid.GlobalIndex.X; chunk < chunks; chunk += stride)
        {
            long first = chunk * 32;
            float scale = absmax.Get(first >> blockShift);
            UInt4 bytes = packed[chunk];
            if (first + 32 <= count)
            {
                for (int word = 0; word < 4; word++)
                {
                    uint w = word == 0 ? bytes.X : word == 1 ? bytes.Y : word == 2 ? bytes.Z : bytes.W;
                    output[(chunk * 8) + (word * 2)] = Floats(w & 0xFFFF, table, scale);
                    output[(chunk * 8) + (word * 2) + 1] = Floats(w >> 16, table, scale);
                }
            }
            else
            {
                for (long i = first; i < count; i++)
                {
                    outputTail[i] = table[Code(bytes, (int)(i - first))] * scale;
                }
            }
        }
    }

    // Four packed bytes → eight bf16 values, two per uint (element 2k in the low half).
    private static UInt4 Pairs(uint word, ArrayView<float> table, float scale)
    {
        UInt4 result;
        result.X = Pair(word & 0xFF, table, scale);
        result.Y = Pair((word >> 8) & 0xFF, table, scale);
        result.Z = Pair((word >> 16) & 0xFF, table, scale);
        result.W = Pair(word >> 24, table, scale);
        return result;
    }

    private static uint Pair(uint b, ArrayView<float> table, float scale) =>
        ToBf16(table[(int)(b >> 4)] * scale) | (ToBf16(table[(int)(b & 15)] * scale) << 16);

    // Two packed bytes → four float32 values.
    private static UInt4 Floats(uint twoBytes, ArrayView<float> table, float scale)
    {
        UInt4 result;
        result.X = Interop.FloatAsInt(table[(int)((twoBytes >> 4) & 15)] * scale);
        result.Y = Interop.FloatAsInt(table[(int)(twoBytes & 15)] * scale);
        result.Z = Interop.FloatAsInt(table[(int)((twoBytes >> 12) & 15)] * scale);
        result.W = Interop.FloatAsInt(table[(int)((twoBytes >> 8) & 15)] * scale);
        return result;
    }

    private static int Code(UInt4 bytes, int index)
    {
        int byteIndex = index / 2;
        int word = byteIndex / 4;
        uint w = word == 0 ? bytes.X : word == 1 ? bytes.Y : word == 2 ? bytes.Z : bytes.W;
        uint b = (w >> ((byteIndex % 4) * 8)) & 0xFF;
        return (int)((index & 1) == 0 ? b >> 4 : b & 15);
    }

    // float32 → bf16 bits with the compute dtype's own rounding (nearest even).
    private static uint ToBf16(float value) => default(Bf16Element).Store(value);
}
