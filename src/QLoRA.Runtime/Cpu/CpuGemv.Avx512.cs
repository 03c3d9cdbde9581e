using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace QLoRA.Runtime.Cpu;

/// <summary>
/// The AVX-512 path of the 4-bit GEMV. A 16-entry code table fits one register, so a single <c>vpermps</c> decodes 16
/// codes (AVX2 needs two permutes and a blend for 8). Per absmax block the table is scaled by the block's absmax once, so
/// the decoded weights are exactly the dequantized values fl(code·absmax). Each (weight row, batch row) pair accumulates
/// its products in one register over the whole row, even elements then odd ones per 32, and is reduced once at its end.
/// Four weight rows go together against up to four batch rows: each 32-element slice of x, loaded from L2 once, serves
/// the four weight rows from L1 (one weight row at a time, x streamed from L2 per row, was what limited batches of 4
/// and 8), and sixteen independent FMA chains hide the FMA latency at batch 1. Every pair is summed in the same order
/// whatever the batch size, its place in the batch or its weight row's group, so a sequence decoded alone and in a
/// batch gets the same bits.
/// </summary>
internal static unsafe partial class CpuGemv
{
    // Weight rows [o, o + TWeights.Count) against TRows.Count batch rows. With one weight row the blocks may begin
    // anywhere in it; with four they must begin at the same columns (in_features a multiple of the block size).
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void BlockAvx512<TWeights, TRows>(byte* packed, float* table, float[] absmax, int blockSize, int inFeatures, RowGroup rows, int first, int o)
        where TWeights : struct, IRowCount
        where TRows : struct, IRowCount
    {
        int weights = TWeights.Count, batch = TRows.Count;
        long stride = inFeatures, rowBytes = inFeatures / 2;
        Vector512<float> codes = Vector512.Load(table);
        Vector512<float> a00 = default, a01 = default, a02 = default, a03 = default;
        Vector512<float> a10 = default, a11 = default, a12 = default, a13 = default;
        Vector512<float> a20 = default, a21 = default, a22 = default, a23 = default;
        Vector512<float> a30 = default, a31 = default, a32 = default, a33 = default;
        long start = (long)o * inFeatures;
        long block = start / blockSize;
        long blockEnd = (block + 1) * blockSize;
        long blocksPerRow = weights > 1 ? inFeatures / blockSize : 0;
        byte* bytes = packed + (start >> 1); // start is even: in_features is a multiple of 32
        float* x = rows.X;
        for (int i = 0; i < inFeatures;)
        {
            int length = (int)Math.Min(inFeatures - i, blockEnd - (start + i));
            Vector512<float> s0 = codes * absmax[block]; // fl(code·absmax): the dequantized values
            Vector512<float> s1 = weights > 1 ? codes * absmax[block + blocksPerRow] : default;
            Vector512<float> s2 = weights > 1 ? codes * absmax[block + (2 * blocksPerRow)] : default;
            Vector512<float> s3 = weights > 1 ? codes * absmax[block + (3 * blocksPerRow)] : default;
            for (int j = 0; j < length; j += 32, bytes += 16, x += 32)
            {
                Row(ref a00, ref a01, ref a02, ref a03, s0, bytes, x, stride, batch);
                if (weights > 1)
                {
                    Row(ref a10, ref a11, ref a12, ref a13, s1, bytes + rowBytes, x, stride, batch);
                    Row(ref a20, ref a21, ref a22, ref a23, s2, bytes + (2 * rowBytes), x, stride, batch);
                    Row(ref a30, ref a31, ref a32, ref a33, s3, bytes + (3 * rowBytes), x, stride, batch);
                }
            }

            i += length;
            block++;
            blockEnd += blockSize;
        }

        float* sums = rows.Sums + ((long)(o - first) * rows.Stride);
        Store(sums, a00, a01, a02, a03, batch);
        if (weights > 1)
        {
            Store(sums + rows.Stride, a10, a11, a12, a13, batch);
            Store(sums + (2 * rows.Stride), a20, a21, a22, a23, batch);
            Store(sums + (3 * rows.Stride), a30, a31, a32, a33, batch);
        }
    }

    // One weight row's 32 codes decoded (16 bytes: high nibbles are the even elements) and multiplied into each batch
    // row's accumulator: even elements first, then odd ones.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Row(ref Vector512<float> a0, ref Vector512<float> a1, ref Vector512<float> a2, ref Vector512<float> a3, Vector512<float> scaled, byte* bytes, float* x, long stride, int batch)
    {
        Vector512<int> pairs = Avx512F.ConvertToVector512Int32(Vector128.Load(bytes)); // vpmovzxbd
        // vpermps reads only the low 4 bits of each index: the low nibble needs no mask.
        Vector512<float> even = Avx512F.PermuteVar16x32(scaled, pairs >>> 4);
        Vector512<float> odd = Avx512F.PermuteVar16x32(scaled, pairs);
        a0 = Avx512F.FusedMultiplyAdd(odd, Vector512.Load(x + 16), Avx512F.FusedMultiplyAdd(even, Vector512.Load(x), a0));
        if (batch > 1)
        {
            a1 = Avx512F.FusedMultiplyAdd(odd, Vector512.Load(x + stride + 16), Avx512F.FusedMultiplyAdd(even, Vector512.Load(x + stride), a1));
        }

        if (batch > 2)
        {
            a2 = Avx512F.FusedMultiplyAdd(odd, Vector512.Load(x + (2 * stride) + 16), Avx512F.FusedMultiplyAdd(even, Vector512.Load(x + (2 * stride)), a2));
        }

        if (batch > 3)
        {
            a3 = Avx512F.FusedMultiplyAdd(odd, Vector512.Load(x + (3 * stride) + 16), Avx512F.FusedMultiplyAdd(even, Vector512.Load(x + (3 * stride)), a3));
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Store(float* sums, Vector512<float> a0, Vector512<float> a1, Vector512<float> a2, Vector512<float> a3, int batch)
    {
        sums[0] = Vector512.Sum(a0);
        if (batch > 1)
        {
            sums[1] = Vector512.Sum(a1);
        }

        if (batch > 2)
        {
            sums[2] = Vector512.Sum(a2);
        }

        if (batch > 3)
        {
            sums[3] = Vector512.Sum(a3);
        }
    }
}
