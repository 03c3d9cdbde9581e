using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace QLoRA.Core.Quantization;

/// <summary>
/// Per-block 4-bit kernels on float32 data: absmax, quantize (scaled codes, packed high nibble first) and
/// dequantize. AVX-512 and AVX2 paths with a scalar tail; <see cref="VectorWidth"/> can force a narrower path
/// so tests cover every path on one machine.
/// </summary>
internal static unsafe partial class FourBitKernels
{
    /// <summary>Widest vector path to use in bits: 512, 256 or 0 (scalar). Defaults to the widest the CPU has.</summary>
    internal static int VectorWidth { get; set; } = DetectWidth();

    internal static int DetectWidth() =>
        Avx512F.IsSupported && Avx512BW.IsSupported ? 512 : Avx2.IsSupported ? 256 : 0;

    // Thresholds for the three table steps of the 4-level NF4 search, indexed by (code so far) >> 1:
    // step s compares against t[code + s - 1], i.e. T_s[k] = t[2k + s - 1].
    private static readonly Vector256<float> Nf4Step4 = Nf4StepTable(4);
    private static readonly Vector256<float> Nf4Step2 = Nf4StepTable(2);
    private static readonly Vector256<float> Nf4Step1 = Nf4StepTable(1);
    private static readonly float Nf4Root = FourBitCodes.Nf4Midpoints[7];

    // FP4 magnitude search, indexed by bucket-so-far >> 1 (step 2 then step 1), and bucket -> bit pattern.
    private static readonly Vector256<float> Fp4Step2 = Fp4StepTable(2);
    private static readonly Vector256<float> Fp4Step1 = Fp4StepTable(1);
    private static readonly Vector256<int> Fp4Buckets = Vector256.Create(0, 1, 6, 7, 4, 5, 2, 3);
    private static readonly float Fp4Root = FourBitCodes.Fp4MagnitudePivots[3];

    private static readonly Vector256<float> Nf4Low = Vector256.Create(FourBitCodes.Values(QuantType.Nf4)[..8]);
    private static readonly Vector256<float> Nf4High = Vector256.Create(FourBitCodes.Values(QuantType.Nf4)[8..]);
    private static readonly Vector256<float> Fp4Low = Vector256.Create(FourBitCodes.Values(QuantType.Fp4)[..8]);
    private static readonly Vector256<float> Fp4High = Vector256.Create(FourBitCodes.Values(QuantType.Fp4)[8..]);

    private static Vector256<float> Nf4StepTable(int step)
    {
        ReadOnlySpan<float> t = FourBitCodes.Nf4Midpoints;
        Span<float> table = stackalloc float[8];
        for (int k = 0; k < 8; k++)
        {
            table[k] = t[Math.Min((2 * k) + step - 1, 14)];
        }

        return Vector256.Create<float>(table);
    }

    private static Vector256<float> Fp4StepTable(int step)
    {
        ReadOnlySpan<float> p = FourBitCodes.Fp4MagnitudePivots;
        Span<float> table = stackalloc float[8];
        for (int k = 0; k < 8; k++)
        {
            table[k] = p[Math.Min((2 * k) + step - 1, 6)];
        }

        return Vector256.Create<float>(table);
    }

    /// <summary>
    /// Largest |x| of the block as raw float bits (integer max of the sign-cleared bits orders finite values
    /// like their magnitudes); a result ≥ 0x7F800000 means the block holds NaN or ±Infinity.
    /// </summary>
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
    internal static uint AbsMaxBits(float* src, int count)
    {
        uint* bits = (uint*)src;
        int i = 0;
        uint max = 0;
        if (VectorWidth >= 512 && count >= 16)
        {
            Vector512<uint> acc = Vector512<uint>.Zero;
            Vector512<uint> mask = Vector512.Create(0x7FFF_FFFFu);
            for (; i <= count - 16; i += 16)
            {
                acc = Vector512.Max(acc, Vector512.Load(bits + i) & mask);
            }

            max = MaxAcross(Vector256.Max(acc.GetLower(), acc.GetUpper()));
        }
        else if (VectorWidth >= 256 && count >= 8)
        {
            Vector256<uint> acc = Vector256<uint>.Zero;
            Vector256<uint> mask = Vector256.Create(0x7FFF_FFFFu);
            for (; i <= count - 8; i += 8)
            {
                acc = Vector256.Max(acc, Vector256.Load(bits + i) & mask);
            }

            max = MaxAcross(acc);
        }

        for (; i < count; i++)
        {
            max = Math.Max(max, bits[i] & 0x7FFF_FFFFu);
        }

        return max;
    }

    private static uint MaxAcross(Vector256<uint> v)
    {
        Vector128<uint> m = Vector128.Max(v.GetLower(), v.GetUpper());
        m = Vector128.Max(m, Vector128.Shuffle(m, Vector128.Create(2u, 3u, 0u, 1u)));
        m = Vector128.Max(m, Vector128.Shuffle(m, Vector128.Create(1u, 0u, 3u, 2u)));
        return m.ToScalar();
    }

    /// <summary>
    /// Quantizes <paramref name="count"/> values, each multiplied by <paramref name="scale"/> (1/absmax), into
    /// ceil(count/2) packed bytes; an odd final value gets the zero code in its low nibble.
    /// </summary>
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
    internal static void Quantize(float* src, int count, float scale, byte* dst, QuantType type)
    {
        int i = 0;
        if (VectorWidth >= 512)
        {
            i = type == QuantType.Nf4 ? QuantizeNf4Avx512(src, count, scale, dst) : QuantizeFp4Avx512(src, count, scale, dst);
        }
        else if (VectorWidth >= 256)
        {
            i = type == QuantType.Nf4 ? QuantizeNf4Avx2(src, count, scale, dst) : QuantizeFp4Avx2(src, count, scale, dst);
        }

        QuantizeScalar(src + i, count - i, scale, dst + (i / 2), type);
    }

    /// <summary>The plain scalar loop: reference path, vector tail and fallback.</summary>
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
    internal static void QuantizeScalar(float* src, int count, float scale, byte* dst, QuantType type)
    {
        int pairs = count / 2;
        if (type == QuantType.Nf4)
        {
            for (int j = 0; j < pairs; j++)
            {
                dst[j] = (byte)((FourBitCodes.QuantizeNf4(src[2 * j] * scale) << 4) | FourBitCodes.QuantizeNf4(src[(2 * j) + 1] * scale));
            }
        }
        else
        {
            for (int j = 0; j < pairs; j++)
            {
                dst[j] = (byte)((FourBitCodes.QuantizeFp4(src[2 * j] * scale) << 4) | FourBitCodes.QuantizeFp4(src[(2 * j) + 1] * scale));
            }
        }

        if ((count & 1) != 0)
        {
            int high = FourBitCodes.Quantize(type, src[count - 1] * scale);
            dst[pairs] = (byte)((high << 4) | FourBitCodes.ZeroCode(type));
        }
    }

    /// <summary>Writes the zero code for <paramref name="count"/> values (a block whose absmax is 0).</summary>
    internal static void FillZero(byte* dst, int count, QuantType type)
    {
        byte zero = FourBitCodes.ZeroCode(type);
        new Span<byte>(dst, (count + 1) / 2).Fill((byte)((zero << 4) | zero));
    }

    private static int QuantizeNf4Avx512(float* src, int count, float scale, byte* dst)
    {
        Vector512<float> vscale = Vector512.Create(scale);
        Vector512<float> root = Vector512.Create(Nf4Root);
        Vector512<float> t4 = Vector512.Create(Nf4Step4, Nf4Step4);
        Vector512<float> t2 = Vector512.Create(Nf4Step2, Nf4Step2);
        Vector512<float> t1 = Vector512.Create(Nf4Step1, Nf4Step1);
        Vector512<int> eight = Vector512.Create(8);
        Vector512<int> four = Vector512.Create(4);
        Vector512<int> two = Vector512.Create(2);
        int i = 0;
        for (; i <= count - 16; i += 16)
        {
            Vector512<float> v = Vector512.Load(src + i) * vscale;
            Vector512<int> code = Vector512.GreaterThan(v, root).AsInt32() & eight;
            code += Vector512.GreaterThan(v, Avx512F.PermuteVar16x32(t4, code >>> 1)).AsInt32() & four;
            code += Vector512.GreaterThan(v, Avx512F.PermuteVar16x32(t2, code >>> 1)).AsInt32() & two;
            code -= Vector512.GreaterThan(v, Avx512F.PermuteVar16x32(t1, code >>> 1)).AsInt32();
            StorePacked16(code, dst + (i / 2));
        }

        return i;
    }

    private static int QuantizeFp4Avx512(float* src, int count, float scale, byte* dst)
    {
        Vector512<float> vscale = Vector512.Create(scale);
        Vector512<float> root = Vector512.Create(Fp4Root);
        Vector512<float> p2 = Vector512.Create(Fp4Step2, Fp4Step2);
        Vector512<float> p1 = Vector512.Create(Fp4Step1, Fp4Step1);
        Vector512<int> buckets = Vector512.Create(Fp4Buckets, Fp4Buckets);
        Vector512<int> eight = Vector512.Create(8);
        Vector512<int> four = Vector512.Create(4);
        Vector512<int> two = Vector512.Create(2);
        int i = 0;
        for (; i <= count - 16; i += 16)
        {
            Vector512<float> v = Vector512.Load(src + i) * vscale;
            Vector512<int> sign = Vector512.LessThan(v, Vector512<float>.Zero).AsInt32() & eight;
            Vector512<float> a = Vector512.Abs(v);
            Vector512<int> bucket = Vector512.GreaterThan(a, root).AsInt32() & four;
            bucket += Vector512.GreaterThan(a, Avx512F.PermuteVar16x32(p2, bucket >>> 1)).AsInt32() & two;
            bucket -= Vector512.GreaterThan(a, Avx512F.PermuteVar16x32(p1, bucket >>> 1)).AsInt32();
            StorePacked16(Avx512F.PermuteVar16x32(buckets, bucket) | sign, dst + (i / 2));
        }

        return i;
    }

    // 16 codes (one per int lane, element order) -> 8 bytes, first element of each pair in the high nibble.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void StorePacked16(Vector512<int> code, byte* dst)
    {
        // vpmovqb keeps the low byte of each qword: (first << 4) | second; the higher garbage bits are dropped.
        Vector512<long> pairs = code.AsInt64();
        *(ulong*)dst = Avx512F.ConvertToVector128Byte((pairs << 4) | (pairs >>> 32)).AsUInt64().ToScalar();
    }

    private static int QuantizeNf4Avx2(float* src, int count, float scale, byte* dst)
    {
        Vector256<float> vscale = Vector256.Create(scale);
        Vector256<float> root = Vector256.Create(Nf4Root);
        int i = 0;
        for (; i <= count - 16; i += 16)
        {
            Vector256<int> a = Nf4Codes8(Vector256.Load(src + i) * vscale, root);
            Vector256<int> b = Nf4Codes8(Vector256.Load(src + i + 8) * vscale, root);
            StorePacked16(a, b, dst + (i / 2));
        }

        return i;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<int> Nf4Codes8(Vector256<float> v, Vector256<float> root)
    {
        Vector256<int> code = Vector256.GreaterThan(v, root).AsInt32() & Vector256.Create(8);
        code += Vector256.GreaterThan(v, Avx2.PermuteVar8x32(Nf4Step4, code >>> 1)).AsInt32() & Vector256.Create(4);
        code += Vector256.GreaterThan(v, Avx2.PermuteVar8x32(Nf4Step2, code >>> 1)).AsInt32() & Vector256.Create(2);
        code -= Vector256.GreaterThan(v, Avx2.PermuteVar8x32(Nf4Step1, code >>> 1)).AsInt32();
        return code;
    }

    private static int QuantizeFp4Avx2(float* src, int count, float scale, byte* dst)
    {
        Vector256<float> vscale = Vector256.Create(scale);
        Vector256<float> root = Vector256.Create(Fp4Root);
        int i = 0;
        for (; i <= count - 16; i += 16)
        {
            Vector256<int> a = Fp4Codes8(Vector256.Load(src + i) * vscale, root);
            Vector256<int> b = Fp4Codes8(Vector256.Load(src + i + 8) * vscale, root);
            StorePacked16(a, b, dst + (i / 2));
        }

        return i;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<int> Fp4Codes8(Vector256<float> v, Vector256<float> root)
    {
        Vector256<int> sign = Vector256.LessThan(v, Vector256<float>.Zero).AsInt32() & Vector256.Create(8);
        Vector256<float> a = Vector256.Abs(v);
        Vector256<int> bucket = Vector256.GreaterThan(a, root).AsInt32() & Vector256.Create(4);
        bucket += Vector256.GreaterThan(a, Avx2.PermuteVar8x32(Fp4Step2, bucket >>> 1)).AsInt32() & Vector256.Create(2);
        bucket -= Vector256.GreaterThan(a, Avx2.PermuteVar8x32(Fp4Step1, bucket >>> 1)).AsInt32();
        return Avx2.PermuteVar8x32(Fp4Buckets, bucket) | sign;
    }

    // Codes of elements 0..7 in a and 8..15 in b -> 8 packed bytes.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void StorePacked16(Vector256<int> a, Vector256<int> b, byte* dst)
    {
        Vector256<long> mask = Vector256.Create(0xFFL);
        Vector256<long> pa = a.AsInt64();
        Vector256<long> pb = b.AsInt64();
        pa = ((pa << 4) | (pa >>> 32)) & mask;            // bytes 0..3 in the low dword of each qword
        pb = ((pb << 4) | (pb >>> 32)) & mask;            // bytes 4..7
        Vector256<int> mixed = (pa | (pb << 32)).AsInt32(); // dwords: b0 b4 b1 b5 b2 b6 b3 b7
        Vector256<int> ordered = Avx2.PermuteVar8x32(mixed, Vector256.Create(0, 2, 4, 6, 1, 3, 5, 7));
        Vector128<short> words = Sse2.PackSignedSaturate(ordered.GetLower(), ordered.GetUpper());
        *(ulong*)dst = Sse2.PackUnsignedSaturate(words, words).AsUInt64().ToScalar();
    }

    /// <summary>
    /// Decodes ceil(count/2) packed bytes into <paramref name="count"/> floats: code value × <paramref name="absmax"/>
    /// in float32, as bitsandbytes' dequantize kernel computes it.
    /// </summary>
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
    internal static void Dequantize(byte* src, int count, float absmax, float* dst, QuantType type)
    {
        int i = 0;
        if (VectorWidth >= 512)
        {
            i = DequantizeAvx512(src, count, absmax, dst, type);
        }
        else if (VectorWidth >= 256)
        {
            i = DequantizeAvx2(src, count, absmax, dst, type);
        }

        DequantizeScalar(src + (i / 2), count - i, absmax, dst + i, type);
    }

    /// <summary>The plain scalar loop: reference path, vector tail and fallback.</summary>
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
    internal static void DequantizeScalar(byte* src, int count, float absmax, float* dst, QuantType type)
    {
        ReadOnlySpan<float> table = FourBitCodes.Values(type);
        int pairs = count / 2;
        for (int j = 0; j < pairs; j++)
        {
            byte b = src[j];
            dst[2 * j] = table[b >> 4] * absmax;
            dst[(2 * j) + 1] = table[b & 15] * absmax;
        }

        if ((count & 1) != 0)
        {
            dst[count - 1] = table[src[pairs] >> 4] * absmax;
        }
    }

    private static int DequantizeAvx512(byte* src, int count, float absmax, float* dst, QuantType type)
    {
        Vector512<float> table = type == QuantType.Nf4 ? Vector512.Create(Nf4Low, Nf4High) : Vector512.Create(Fp4Low, Fp4High);
        Vector512<float> scale = Vector512.Create(absmax);
        Vector512<int> firstHalf = Vector512.Create(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
        Vector512<int> secondHalf = Vector512.Create(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
        Vector512<int> low4 = Vector512.Create(15);
        int i = 0;
        for (; i <= count - 32; i += 32)
        {
            Vector512<int> bytes = Avx512F.ConvertToVector512Int32(Vector128.Load(src + (i / 2)));
            Vector512<float> high = Avx512F.PermuteVar16x32(table, bytes >>> 4) * scale;
            Vector512<float> low = Avx512F.PermuteVar16x32(table, bytes & low4) * scale;
            Avx512F.PermuteVar16x32x2(high, firstHalf, low).Store(dst + i);
            Avx512F.PermuteVar16x32x2(high, secondHalf, low).Store(dst + i + 16);
        }

        return i;
    }

    private static int DequantizeAvx2(byte* src, int count, float absmax, float* dst, QuantType type)
    {
        Vector256<float> tableLow = type == QuantType.Nf4 ? Nf4Low : Fp4Low;
        Vector256<float> tableHigh = type == QuantType.Nf4 ? Nf4High : Fp4High;
        Vector256<float> scale = Vector256.Create(absmax);
        int i = 0;
        for (; i <= count - 16; i += 16)
        {
            Vector256<int> bytes = Avx2.ConvertToVector256Int32(src + (i / 2));
            Vector256<float> high = Lookup16(tableLow, tableHigh, bytes >>> 4) * scale;
            Vector256<float> low = Lookup16(tableLow, tableHigh, bytes & Vector256.Create(15)) * scale;
            Vector256<float> u0 = Avx.UnpackLow(high, low);  // h0 l0 h1 l1 | h4 l4 h5 l5
            Vector256<float> u1 = Avx.UnpackHigh(high, low); // h2 l2 h3 l3 | h6 l6 h7 l7
            Avx.Permute2x128(u0, u1, 0x20).Store(dst + i);
            Avx.Permute2x128(u0, u1, 0x31).Store(dst + i + 8);
        }

        return i;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> Lookup16(Vector256<float> tableLow, Vector256<float> tableHigh, Vector256<int> index)
    {
        // BlendVariable picks by each lane's sign bit: move index bit 3 there.
        Vector256<float> selectHigh = (index << 28).AsSingle();
        return Avx.BlendVariable(Avx2.PermuteVar8x32(tableLow, index), Avx2.PermuteVar8x32(tableHigh, index), selectHigh);
    }
}
