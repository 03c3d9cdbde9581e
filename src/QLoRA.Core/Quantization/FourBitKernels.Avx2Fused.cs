using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace QLoRA.Core.Quantization;

/// <summary>
/// Fused AVX2 block kernels: absmax, scaling and coding of a block in two passes over the input as it lies (bf16 or
/// f32), with no float32 scratch copy and no per-pass calls — per-block overhead, not arithmetic, bounded the
/// unfused path (three calls and a conversion per 64 values). Same arithmetic as the unfused path: bit-identical codes.
/// </summary>
internal static unsafe partial class FourBitKernels
{
    /// <summary>True when the fused AVX2 kernels may run (the 256-bit path is selected and the CPU has AVX2).</summary>
    internal static bool UseAvx2Fused => VectorWidth == 256 && Avx2.IsSupported;

    /// <summary>Quantizes one block of bf16 values (length a multiple of 16); returns its absmax bits (≥ 0x7F800000: non-finite, 0: a zero block, codes not written).</summary>
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
    internal static uint QuantizeBlockBf16Avx2(ushort* src, int length, byte* dst, QuantType type)
    {
        // |x| of a bf16 is its bits with the sign cleared, and unsigned order of those is the order of magnitudes.
        Vector256<ushort> acc = Vector256<ushort>.Zero;
        Vector256<ushort> absMask = Vector256.Create((ushort)0x7FFF);
        for (int i = 0; i < length; i += 16)
        {
            acc = Vector256.Max(acc, Vector256.Load(src + i) & absMask);
        }

        Vector128<ushort> m = Vector128.Max(acc.GetLower(), acc.GetUpper());
        m = Vector128.Max(m, Vector128.Shuffle(m, Vector128.Create((ushort)4, 5, 6, 7, 0, 1, 2, 3)));
        m = Vector128.Max(m, Vector128.Shuffle(m, Vector128.Create((ushort)2, 3, 0, 1, 2, 3, 0, 1)));
        m = Vector128.Max(m, Vector128.Shuffle(m, Vector128.Create((ushort)1, 0, 1, 0, 1, 0, 1, 0)));
        uint maxBits = (uint)m.ToScalar() << 16;
        if (maxBits >= 0x7F80_0000u || maxBits == 0)
        {
            return maxBits;
        }

        Vector256<float> scale = Vector256.Create(1f / BitConverter.UInt32BitsToSingle(maxBits));
        if (type == QuantType.Nf4)
        {
            CodeBf16<Nf4Coder>(src, length, scale, dst);
        }
        else
        {
            CodeBf16<Fp4Coder>(src, length, scale, dst);
        }

        return maxBits;
    }

    /// <summary>Quantizes one block of float32 values (length a multiple of 16); returns its absmax bits as <see cref="QuantizeBlockBf16Avx2"/>.</summary>
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
    internal static uint QuantizeBlockF32Avx2(float* src, int length, byte* dst, QuantType type)
    {
        uint maxBits = AbsMaxBits(src, length);
        if (maxBits >= 0x7F80_0000u || maxBits == 0)
        {
            return maxBits;
        }

        Vector256<float> scale = Vector256.Create(1f / BitConverter.UInt32BitsToSingle(maxBits));
        if (type == QuantType.Nf4)
        {
            CodeF32<Nf4Coder>(src, length, scale, dst);
        }
        else
        {
            CodeF32<Fp4Coder>(src, length, scale, dst);
        }

        return maxBits;
    }

    // One loop per input layout, specialized per code table by the coder struct (the JIT compiles one copy per coder).
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveInlining)]
    private static void CodeBf16<TCoder>(ushort* src, int length, Vector256<float> scale, byte* dst)
        where TCoder : struct, IAvx2Coder
    {
        for (int i = 0; i < length; i += 16)
        {
            Vector256<float> a = (Avx2.ConvertToVector256Int32(src + i) << 16).AsSingle() * scale;
            Vector256<float> b = (Avx2.ConvertToVector256Int32(src + i + 8) << 16).AsSingle() * scale;
            StorePacked16(TCoder.Codes8(a), TCoder.Codes8(b), dst + (i / 2));
        }
    }

    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveInlining)]
    private static void CodeF32<TCoder>(float* src, int length, Vector256<float> scale, byte* dst)
        where TCoder : struct, IAvx2Coder
    {
        for (int i = 0; i < length; i += 16)
        {
            StorePacked16(TCoder.Codes8(Vector256.Load(src + i) * scale), TCoder.Codes8(Vector256.Load(src + i + 8) * scale), dst + (i / 2));
        }
    }

    /// <summary>Eight scaled values (in [-1, 1]) to their 4-bit codes, one per int lane.</summary>
    private interface IAvx2Coder
    {
        static abstract Vector256<int> Codes8(Vector256<float> v);
    }

    private readonly struct Nf4Coder : IAvx2Coder
    {
        [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveInlining)]
        public static Vector256<int> Codes8(Vector256<float> v) => Nf4Codes8(v, Vector256.Create(Nf4Root));
    }

    private readonly struct Fp4Coder : IAvx2Coder
    {
        [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveInlining)]
        public static Vector256<int> Codes8(Vector256<float> v) => Fp4Codes8(v, Vector256.Create(Fp4Root));
    }
}
