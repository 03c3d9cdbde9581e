using System.Numerics.Tensors;
using System.Runtime.InteropServices;
using QLoRA.Core.Numerics;

namespace QLoRA.Core.Quantization;

/// <summary>
/// Blockwise 4-bit dequantization: value = code[q] × absmax[block] in float32, then rounded to the output dtype
/// (bf16 rounds to nearest even), exactly as bitsandbytes' dequantize kernel computes it.
/// </summary>
public static class BlockwiseDequantizer
{
    /// <summary>Dequantizes to float32.</summary>
    /// <param name="packed">Codes, two per byte, length ≥ ceil(n/2).</param>
    /// <param name="absmax">Block maxima, length ≥ ceil(n/blockSize) (already decoded if double-quantized).</param>
    /// <param name="type">NF4 or FP4.</param>
    /// <param name="blockSize">Power of two in 32..4096.</param>
    /// <param name="output">Destination of n values; n is its length.</param>
    /// <exception cref="ArgumentOutOfRangeException">Unsupported block size.</exception>
    /// <exception cref="ArgumentException">An input is too short for <paramref name="output"/>.</exception>
    public static void Dequantize(ReadOnlySpan<byte> packed, ReadOnlySpan<float> absmax, QuantType type, int blockSize, Span<float> output) =>
        DequantizeAny(packed, absmax, type, blockSize, MemoryMarshal.AsBytes(output), BlockwiseQuantizer.ElementKind.F32, output.Length);

    /// <summary>Dequantizes to bf16 (see the float32 overload for the contract).</summary>
    public static void Dequantize(ReadOnlySpan<byte> packed, ReadOnlySpan<float> absmax, QuantType type, int blockSize, Span<BFloat16> output) =>
        DequantizeAny(packed, absmax, type, blockSize, MemoryMarshal.AsBytes(output), BlockwiseQuantizer.ElementKind.BF16, output.Length);

    /// <summary>Dequantizes to float16 (see the float32 overload for the contract).</summary>
    public static void Dequantize(ReadOnlySpan<byte> packed, ReadOnlySpan<float> absmax, QuantType type, int blockSize, Span<Half> output) =>
        DequantizeAny(packed, absmax, type, blockSize, MemoryMarshal.AsBytes(output), BlockwiseQuantizer.ElementKind.F16, output.Length);

    private static unsafe void DequantizeAny(ReadOnlySpan<byte> packed, ReadOnlySpan<float> absmax, QuantType type, int blockSize, Span<byte> output, BlockwiseQuantizer.ElementKind kind, int count)
    {
        BlockwiseLayout.ValidateBlockSize(blockSize);
        int blocks = checked((int)BlockwiseLayout.BlockCount(count, blockSize));
        if (packed.Length < BlockwiseLayout.PackedByteCount(count))
        {
            throw new ArgumentException($"{packed.Length} packed bytes cannot hold {count} values.", nameof(packed));
        }

        if (absmax.Length < blocks)
        {
            throw new ArgumentException($"{absmax.Length} absmax values cannot cover {count} values in blocks of {blockSize}.", nameof(absmax));
        }

        if (count == 0)
        {
            return;
        }

        fixed (byte* src = packed)
        fixed (float* max = absmax)
        fixed (byte* dst = output)
        {
            var job = new DequantizeJob(src, max, type, blockSize, dst, kind, count);
            BlockwiseQuantizer.RunBlocks(blocks, blockSize, job.Run);
        }
    }

    private sealed unsafe class DequantizeJob(byte* src, float* absmax, QuantType type, int blockSize, byte* dst, BlockwiseQuantizer.ElementKind kind, int count)
    {
        [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
        public void Run(int firstBlock, int endBlock)
        {
            float* scratch = stackalloc float[blockSize];
            for (int b = firstBlock; b < endBlock; b++)
            {
                int start = b * blockSize;
                int length = Math.Min(blockSize, count - start);
                if (FourBitKernels.UseAvx512 && length % 32 == 0 && kind != BlockwiseQuantizer.ElementKind.F16)
                {
                    if (kind == BlockwiseQuantizer.ElementKind.BF16)
                    {
                        FourBitKernels.DequantizeBlockBf16Avx512(src + (start / 2), length, absmax[b], (ushort*)dst + start, type);
                    }
                    else
                    {
                        FourBitKernels.DequantizeBlockF32Avx512(src + (start / 2), length, absmax[b], (float*)dst + start, type);
                    }

                    continue;
                }

                float* values = kind == BlockwiseQuantizer.ElementKind.F32 ? (float*)dst + start : scratch;
                FourBitKernels.Dequantize(src + (start / 2), length, absmax[b], values, type);
                switch (kind)
                {
                    case BlockwiseQuantizer.ElementKind.BF16:
                        BFloat16Conversions.FromSingle(new ReadOnlySpan<float>(values, length), new Span<BFloat16>((BFloat16*)dst + start, length));
                        break;
                    case BlockwiseQuantizer.ElementKind.F16:
                        TensorPrimitives.ConvertToHalf(new ReadOnlySpan<float>(values, length), new Span<Half>((Half*)dst + start, length));
                        break;
                }
            }
        }
    }
}
