using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace QLoRA.Core.Quantization;

/// <summary>
/// Fused AVX-512 block kernels: absmax, scaling and coding in one pass over a block straight from bf16 or f32
/// input, and table-driven dequantization.
/// </summary>
/// <remarks>
/// Quantization by buckets: the scaled value v ∈ [-1, 1] falls in one of 32 buckets of width 1/15.5 (FP4: |v| in 16),
/// k = trunc(15.5·v + 16). Adjacent thresholds are at least 0.08 apart, so a bucket holds at most one, and none lies
/// within 1e-4 of a bucket edge, so rounding in k can never put v on the wrong side of a threshold. The code is the
/// number of thresholds below the bucket plus (v &gt; the bucket's threshold) — two 32-entry permutes and one
/// compare, bit-identical to the threshold search. Dequantization builds the block's 16 output values once
/// (code × absmax, rounded to the output dtype) and looks codes up in that table.
/// </remarks>
internal static unsafe partial class FourBitKernels
{
    private const int Buckets = 32;
    private const float BucketScale = 15.5f;
    private const float EdgeMargin = 1e-4f;

    // NF4: bucket k covers [k/16 − 1, (k+1)/16 − 1).
    private static readonly (Vector512<float> Low, Vector512<float> High) Nf4BucketThreshold;
    private static readonly (Vector512<int> Low, Vector512<int> High) Nf4BucketBase;

    // FP4 magnitudes: bucket k covers [k/16, (k+1)/16).
    private static readonly Vector512<float> Fp4BucketThreshold;
    private static readonly Vector512<int> Fp4BucketBase;

    static FourBitKernels()
    {
        (float[] nf4Threshold, int[] nf4Base) = BuildBuckets(FourBitCodes.Nf4Midpoints, Buckets, k => (k - 16) / BucketScale);
        Nf4BucketThreshold = (Vector512.Create(nf4Threshold.AsSpan(0, 16)), Vector512.Create(nf4Threshold.AsSpan(16, 16)));
        Nf4BucketBase = (Vector512.Create(nf4Base.AsSpan(0, 16)), Vector512.Create(nf4Base.AsSpan(16, 16)));
        (float[] fp4Threshold, int[] fp4Base) = BuildBuckets(FourBitCodes.Fp4MagnitudePivots, 16, k => k / BucketScale);
        Fp4BucketThreshold = Vector512.Create<float>(fp4Threshold);
        Fp4BucketBase = Vector512.Create<int>(fp4Base);
    }

    // For each bucket: the number of thresholds strictly below its start, and the one threshold inside it (or 2, never exceeded).
    private static (float[] Threshold, int[] Base) BuildBuckets(ReadOnlySpan<float> thresholds, int buckets, Func<int, float> start)
    {
        var threshold = new float[buckets];
        var baseCode = new int[buckets];
        for (int k = 0; k < buckets; k++)
        {
            float begin = start(k);
            float end = start(k + 1);
            baseCode[k] = 0;
            threshold[k] = 2f;
            int inside = 0;
            foreach (float t in thresholds)
            {
                if (Math.Abs(t - begin) < EdgeMargin)
                {
                    throw new InvalidOperationException($"Threshold {t} lies on the edge of bucket {k}; the bucket kernel needs a margin.");
                }

                if (t < begin)
                {
                    baseCode[k]++;
                }
                else if (t < end)
                {
                    threshold[k] = t;
                    inside++;
                }
            }

            if (inside > 1)
            {
                throw new InvalidOperationException($"Bucket {k} holds {inside} thresholds; the bucket kernel needs at most one.");
            }
        }

        return (threshold, baseCode);
    }

    /// <summary>True when the fused AVX-512 kernels may run.</summary>
    internal static bool UseAvx512 => VectorWidth >= 512;

    /// <summary>Quantizes one block of bf16 values (length a multiple of 32) and returns its absmax bits (≥ 0x7F800000: non-finite).</summary>
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
    internal static uint QuantizeBlockBf16Avx512(ushort* src, int length, byte* dst, QuantType type)
    {
        Vector512<ushort> acc = Vector512<ushort>.Zero;
        Vector512<ushort> absMask = Vector512.Create((ushort)0x7FFF);
        for (int i = 0; i < length; i += 32)
        {
            acc = Vector512.Max(acc, Vector512.Load(src + i) & absMask);
        }

        uint maxBits = (uint)MaxAcross(acc) << 16;
        if (maxBits >= 0x7F80_0000u || maxBits == 0)
        {
            return maxBits; // the caller reports non-finite input or writes a zero block
        }

        Vector512<float> scale = Vector512.Create(1f / BitConverter.UInt32BitsToSingle(maxBits));
        if (type == QuantType.Nf4)
        {
            for (int i = 0; i < length; i += 16)
            {
                Vector512<float> v = (Avx512F.ConvertToVector512Int32(Vector256.Load(src + i)) << 16).AsSingle() * scale;
                StorePacked16(Nf4Bucketed(v), dst + (i / 2));
            }
        }
        else
        {
            for (int i = 0; i < length; i += 16)
            {
                Vector512<float> v = (Avx512F.ConvertToVector512Int32(Vector256.Load(src + i)) << 16).AsSingle() * scale;
                StorePacked16(Fp4Bucketed(v), dst + (i / 2));
            }
        }

        return maxBits;
    }

    /// <summary>Quantizes one block of float32 values (length a multiple of 16) and returns its absmax bits.</summary>
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
    internal static uint QuantizeBlockF32Avx512(float* src, int length, byte* dst, QuantType type)
    {
        Vector512<uint> acc = Vector512<uint>.Zero;
        Vector512<uint> absMask = Vector512.Create(0x7FFF_FFFFu);
        for (int i = 0; i < length; i += 16)
        {
            acc = Vector512.Max(acc, Vector512.Load((uint*)src + i) & absMask);
        }

        uint maxBits = MaxAcross(Vector256.Max(acc.GetLower(), acc.GetUpper()));
        if (maxBits >= 0x7F80_0000u || maxBits == 0)
        {
            return maxBits;
        }

        Vector512<float> scale = Vector512.Create(1f / BitConverter.UInt32BitsToSingle(maxBits));
        if (type == QuantType.Nf4)
        {
            for (int i = 0; i < length; i += 16)
            {
                StorePacked16(Nf4Bucketed(Vector512.Load(src + i) * scale), dst + (i / 2));
            }
        }
        else
        {
            for (int i = 0; i < length; i += 16)
            {
                StorePacked16(Fp4Bucketed(Vector512.Load(src + i) * scale), dst + (i / 2));
            }
        }

        return maxBits;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<int> Nf4Bucketed(Vector512<float> v)
    {
        // |v| ≤ 1 (+1 ulp) keeps 15.5·v + 16 in [0.5, 31.5]: k needs no clamp.
        Vector512<int> k = Vector512.ConvertToInt32(Vector512.FusedMultiplyAdd(v, Vector512.Create(BucketScale), Vector512.Create(16f)));
        Vector512<float> threshold = Avx512F.PermuteVar16x32x2(Nf4BucketThreshold.Low, k, Nf4BucketThreshold.High);
        return Avx512F.PermuteVar16x32x2(Nf4BucketBase.Low, k, Nf4BucketBase.High) - Vector512.GreaterThan(v, threshold).AsInt32();
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<int> Fp4Bucketed(Vector512<float> v)
    {
        Vector512<int> sign = Vector512.LessThan(v, Vector512<float>.Zero).AsInt32() & Vector512.Create(8);
        Vector512<float> a = Vector512.Abs(v);
        Vector512<int> k = Vector512.ConvertToInt32(a * Vector512.Create(BucketScale));
        Vector512<float> threshold = Avx512F.PermuteVar16x32(Fp4BucketThreshold, k);
        Vector512<int> bucket = Avx512F.PermuteVar16x32(Fp4BucketBase, k) - Vector512.GreaterThan(a, threshold).AsInt32();
        return Avx512F.PermuteVar16x32(Vector512.Create(Fp4Buckets, Fp4Buckets), bucket) | sign;
    }

    private static ushort MaxAcross(Vector512<ushort> v)
    {
        Vector256<ushort> m256 = Vector256.Max(v.GetLower(), v.GetUpper());
        Vector128<ushort> m = Vector128.Max(m256.GetLower(), m256.GetUpper());
        m = Vector128.Max(m, Vector128.Shuffle(m, Vector128.Create((ushort)4, 5, 6, 7, 0, 1, 2, 3)));
        m = Vector128.Max(m, Vector128.Shuffle(m, Vector128.Create((ushort)2, 3, 0, 1, 2, 3, 0, 1)));
        m = Vector128.Max(m, Vector128.Shuffle(m, Vector128.Create((ushort)1, 0, 1, 0, 1, 0, 1, 0)));
        return m.ToScalar();
    }

    /// <summary>Dequantizes a block (length a multiple of 32) to bf16 through the block's 16-entry table of rounded values.</summary>
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
    internal static void DequantizeBlockBf16Avx512(byte* src, int length, float absmax, ushort* dst, QuantType type)
    {
        Vector512<float> table = Vector512.Create(type == QuantType.Nf4 ? Nf4Low : Fp4Low, type == QuantType.Nf4 ? Nf4High : Fp4High) * Vector512.Create(absmax);
        Vector512<uint> bf16 = Numerics.BFloat16Conversions.RoundToBf16Bits(table.AsUInt32());
        Vector512<uint> low4 = Vector512.Create(15u);
        for (int i = 0; i < length; i += 32)
        {
            Vector512<uint> bytes = Avx512F.ConvertToVector512UInt32(Vector128.Load(src + (i / 2)));
            Vector512<uint> first = Avx512F.PermuteVar16x32(bf16, bytes >>> 4);
            Vector512<uint> second = Avx512F.PermuteVar16x32(bf16, bytes & low4);
            (first | (second << 16)).Store((uint*)(dst + i)); // little-endian: element 2j in the low half
        }
    }

    /// <summary>Dequantizes a block (length a multiple of 32) to float32 through the block's 16-entry table.</summary>
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
    internal static void DequantizeBlockF32Avx512(byte* src, int length, float absmax, float* dst, QuantType type)
    {
        Vector512<float> table = Vector512.Create(type == QuantType.Nf4 ? Nf4Low : Fp4Low, type == QuantType.Nf4 ? Nf4High : Fp4High) * Vector512.Create(absmax);
        Vector512<int> firstHalf = Vector512.Create(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
        Vector512<int> secondHalf = Vector512.Create(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
        Vector512<int> low4 = Vector512.Create(15);
        for (int i = 0; i < length; i += 32)
        {
            Vector512<int> bytes = Avx512F.ConvertToVector512Int32(Vector128.Load(src + (i / 2)));
            Vector512<float> high = Avx512F.PermuteVar16x32(table, bytes >>> 4);
            Vector512<float> low = Avx512F.PermuteVar16x32(table, bytes & low4);
            Avx512F.PermuteVar16x32x2(high, firstHalf, low).Store(dst + i);
            Avx512F.PermuteVar16x32x2(high, secondHalf, low).Store(dst + i + 16);
        }
    }
}
