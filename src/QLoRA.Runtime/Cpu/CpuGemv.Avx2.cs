using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace QLoRA.Runtime.Cpu;

/// <summary>
/// The AVX2 path of the 4-bit GEMV, shaped like the AVX-512 one: 8 packed bytes decode to 16 weights (high nibbles =
/// even elements) by a 16-entry table lookup in two registers, scaled by the block's absmax to the exact dequantized
/// values fl(code·absmax). Four weight rows go together against one or two batch rows, one accumulator per (weight
/// row, batch row) over the whole row, reduced once at its end: four to eight independent FMA chains (one weight row
/// alone would wait on its own chain's latency), and each slice of x read from L2 once for four weight rows. Every
/// pair is summed in the same order whatever the batch size or grouping: a row of x gets the same bits alone and in a batch.
/// </summary>
internal static unsafe partial class CpuGemv
{
    // Weight rows [o, o + TWeights.Count) against TRows.Count batch rows (see BlockAvx512 for the twin).
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void BlockAvx2<TWeights, TRows>(byte* packed, float* table, float[] absmax, int blockSize, int inFeatures, RowGroup rows, int first, int o)
        where TWeights : struct, IRowCount
        where TRows : struct, IRowCount
    {
        int weights = TWeights.Count, batch = TRows.Count;
        long stride = inFeatures, rowBytes = inFeatures / 2;
        Vector256<float> low = Vector256.Load(table), high = Vector256.Load(table + 8);
        Vector256<float> a00 = default, a01 = default, a10 = default, a11 = default;
        Vector256<float> a20 = default, a21 = default, a30 = default, a31 = default;
        long start = (long)o * inFeatures;
        long block = start / blockSize;
        long blockEnd = (block + 1) * blockSize;
        long blocksPerRow = weights > 1 ? inFeatures / blockSize : 0;
        byte* bytes = packed + (start >> 1); // start is even: in_features is a multiple of 32
        float* x = rows.X;
        for (int i = 0; i < inFeatures;)
        {
            int length = (int)Math.Min(inFeatures - i, blockEnd - (start + i));
            Vector256<float> s0 = Vector256.Create(absmax[block]);
            Vector256<float> s1 = weights > 1 ? Vector256.Create(absmax[block + blocksPerRow]) : default;
            Vector256<float> s2 = weights > 1 ? Vector256.Create(absmax[block + (2 * blocksPerRow)]) : default;
            Vector256<float> s3 = weights > 1 ? Vector256.Create(absmax[block + (3 * blocksPerRow)]) : default;
            for (int j = 0; j < length; j += 16, bytes += 8, x += 16)
            {
                RowAvx2(ref a00, ref a01, low, high, s0, bytes, x, stride, batch);
                if (weights > 1)
                {
                    RowAvx2(ref a10, ref a11, low, high, s1, bytes + rowBytes, x, stride, batch);
                    RowAvx2(ref a20, ref a21, low, high, s2, bytes + (2 * rowBytes), x, stride, batch);
                    RowAvx2(ref a30, ref a31, low, high, s3, bytes + (3 * rowBytes), x, stride, batch);
                }
            }

            i += length;
            block++;
            blockEnd += blockSize;
        }

        float* sums = rows.Sums + ((long)(o - first) * rows.Stride);
        StoreAvx2(sums, a00, a01, batch);
        if (weights > 1)
        {
            StoreAvx2(sums + rows.Stride, a10, a11, batch);
            StoreAvx2(sums + (2 * rows.Stride), a20, a21, batch);
            StoreAvx2(sums + (3 * rows.Stride), a30, a31, batch);
        }
    }

    // One weight row's 16 codes (8 bytes) decoded to fl(code·absmax) and multiplied into each batch row's accumulator:
    // the 8 even elements first, then the 8 odd ones.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void RowAvx2(ref Vector256<float> a0, ref Vector256<float> a1, Vector256<float> low, Vector256<float> high, Vector256<float> scale, byte* bytes, float* x, long stride, int batch)
    {
        Vector256<int> codes = Avx2.ConvertToVector256Int32(bytes); // vpmovzxbd
        Vector256<float> even = Lookup16(low, high, codes >>> 4) * scale;
        Vector256<float> odd = Lookup16(low, high, codes & Vector256.Create(15)) * scale;
        a0 = Fma.MultiplyAdd(odd, Vector256.Load(x + 8), Fma.MultiplyAdd(even, Vector256.Load(x), a0));
        if (batch > 1)
        {
            a1 = Fma.MultiplyAdd(odd, Vector256.Load(x + stride + 8), Fma.MultiplyAdd(even, Vector256.Load(x + stride), a1));
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void StoreAvx2(float* sums, Vector256<float> a0, Vector256<float> a1, int batch)
    {
        sums[0] = Vector256.Sum(a0);
        if (batch > 1)
        {
            sums[1] = Vector256.Sum(a1);
        }
    }
}
