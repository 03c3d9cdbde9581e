using System.Numerics.Tensors;
using System.Runtime.InteropServices;
using QLoRA.Core.Numerics;

namespace QLoRA.Core.Quantization;

/// <summary>
/// Blockwise 4-bit quantization with bitsandbytes semantics: the flat (row-major) input is cut into blocks of
/// <c>blockSize</c> values; each block stores its float32 absmax and one 4-bit code per value, two per byte,
/// the first value in the high nibble.
/// </summary>
/// <remarks>
/// Values are multiplied by 1/absmax (one reciprocal per block, as bitsandbytes does) and mapped by
/// <see cref="FourBitCodes"/>. A block of zeros has absmax 0 and quantizes to the zero code. Work is vectorized
/// (AVX-512/AVX2, scalar tail) and split across cores by whole blocks; results do not depend on the split.
/// </remarks>
public static partial class BlockwiseQuantizer
{
    // Enough work per task that scheduling is noise: about 64 Ki values.
    private const int ValuesPerTask = 1 << 16;

    /// <summary>Quantizes float32 values.</summary>
    /// <param name="input">Flat values, length n.</param>
    /// <param name="packed">Destination codes, length ≥ ceil(n/2).</param>
    /// <param name="absmax">Destination block maxima, length ≥ ceil(n/blockSize).</param>
    /// <param name="type">NF4 or FP4.</param>
    /// <param name="blockSize">Power of two in 32..4096.</param>
    /// <param name="tensorName">Named in errors.</param>
    /// <exception cref="ArgumentOutOfRangeException">Unsupported block size.</exception>
    /// <exception cref="ArgumentException">A destination is too short.</exception>
    /// <exception cref="NonFiniteValueException">The input holds NaN or ±Infinity.</exception>
    public static void Quantize(ReadOnlySpan<float> input, Span<byte> packed, Span<float> absmax, QuantType type, int blockSize, string? tensorName = null) =>
        QuantizeAny(MemoryMarshal.AsBytes(input), ElementKind.F32, input.Length, packed, absmax, type, blockSize, tensorName);

    /// <summary>Quantizes bf16 values (see the float32 overload for the contract).</summary>
    public static void Quantize(ReadOnlySpan<BFloat16> input, Span<byte> packed, Span<float> absmax, QuantType type, int blockSize, string? tensorName = null) =>
        QuantizeAny(MemoryMarshal.AsBytes(input), ElementKind.BF16, input.Length, packed, absmax, type, blockSize, tensorName);

    /// <summary>Quantizes float16 values (see the float32 overload for the contract).</summary>
    public static void Quantize(ReadOnlySpan<Half> input, Span<byte> packed, Span<float> absmax, QuantType type, int blockSize, string? tensorName = null) =>
        QuantizeAny(MemoryMarshal.AsBytes(input), ElementKind.F16, input.Length, packed, absmax, type, blockSize, tensorName);

    /// <summary>
    /// Quantizes raw little-endian bytes of a float tensor of dtype <paramref name="dtype"/> (F32, BF16 or F16),
    /// e.g. a tensor read straight from a memory-mapped safetensors file.
    /// </summary>
    /// <exception cref="ArgumentException">The dtype is not a float type or the byte length is not a whole number of elements.</exception>
    public static void Quantize(ReadOnlySpan<byte> input, DType dtype, Span<byte> packed, Span<float> absmax, QuantType type, int blockSize, string? tensorName = null)
    {
        ElementKind kind = ToKind(dtype);
        int size = dtype.SizeInBytes();
        if (input.Length % size != 0)
        {
            throw new ArgumentException($"{input.Length} bytes is not a whole number of {dtype} elements.", nameof(input));
        }

        QuantizeAny(input, kind, input.Length / size, packed, absmax, type, blockSize, tensorName);
    }

    internal enum ElementKind
    {
        F32,
        BF16,
        F16,
    }

    internal static ElementKind ToKind(DType dtype) => dtype switch
    {
        DType.F32 => ElementKind.F32,
        DType.BF16 => ElementKind.BF16,
        DType.F16 => ElementKind.F16,
        _ => throw new ArgumentException($"Only F32, BF16 and F16 tensors can be 4-bit quantized, not {dtype}.", nameof(dtype)),
    };

    private static unsafe void QuantizeAny(ReadOnlySpan<byte> input, ElementKind kind, int count, Span<byte> packed, Span<float> absmax, QuantType type, int blockSize, string? tensorName)
    {
        BlockwiseLayout.ValidateBlockSize(blockSize);
        int blocks = checked((int)BlockwiseLayout.BlockCount(count, blockSize));
        CheckLength(packed.Length, BlockwiseLayout.PackedByteCount(count), nameof(packed));
        CheckLength(absmax.Length, blocks, nameof(absmax));
        if (count == 0)
        {
            return;
        }

        fixed (byte* src = input)
        fixed (byte* dst = packed)
        fixed (float* max = absmax)
        {
            var job = new QuantizeJob(src, kind, count, dst, max, type, blockSize, tensorName);
            RunBlocks(blocks, blockSize, job.Run);
        }
    }

    internal static void CheckLength(int actual, long required, string name)
    {
        if (actual < required)
        {
            throw new ArgumentException($"Destination '{name}' holds {actual} elements; {required} are needed.", name);
        }
    }

    /// <summary>Runs <paramref name="body"/>(firstBlock, endBlock) over all blocks, in parallel when there is enough work.</summary>
    internal static void RunBlocks(int blocks, int blockSize, Action<int, int> body)
    {
        int blocksPerTask = Math.Max(1, ValuesPerTask / blockSize);
        int tasks = (blocks + blocksPerTask - 1) / blocksPerTask;
        if (tasks <= 1 || Environment.ProcessorCount == 1)
        {
            body(0, blocks);
            return;
        }

        try
        {
            Parallel.For(0, tasks, t => body(t * blocksPerTask, Math.Min(blocks, (t + 1) * blocksPerTask)));
        }
        catch (AggregateException e) when (e.InnerExceptions.Count > 0)
        {
            // Report the error of the earliest failing block, as a sequential run would.
            Exception first = e.InnerExceptions.OrderBy(x => x is NonFiniteValueException n ? n.ElementIndex : long.MaxValue).First();
            System.Runtime.ExceptionServices.ExceptionDispatchInfo.Capture(first).Throw();
        }
    }

    private sealed unsafe class QuantizeJob(byte* src, ElementKind kind, int count, byte* dst, float* absmax, QuantType type, int blockSize, string? tensorName)
    {
        [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
        public void Run(int firstBlock, int endBlock)
        {
            float* scratch = stackalloc float[blockSize];
            for (int b = firstBlock; b < endBlock; b++)
            {
                int start = b * blockSize;
                int length = Math.Min(blockSize, count - start);
                if (kind != ElementKind.F16 && ((FourBitKernels.UseAvx512 && length % 32 == 0) || (FourBitKernels.UseAvx2Fused && length % 16 == 0)))
                {
                    RunFused(b, start, length, scratch);
                    continue;
                }

                float* values = LoadBlock(src, kind, start, length, scratch);
                uint maxBits = FourBitKernels.AbsMaxBits(values, length);
                if (maxBits >= 0x7F80_0000u)
                {
                    ThrowNonFinite(values, start, length, tensorName);
                }

                float max = BitConverter.UInt32BitsToSingle(maxBits);
                absmax[b] = max;
                byte* codes = dst + (start / 2);
                if (max == 0f)
                {
                    FourBitKernels.FillZero(codes, length, type);
                }
                else
                {
                    FourBitKernels.Quantize(values, length, 1f / max, codes, type);
                }
            }
        }

        [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
        private void RunFused(int block, int start, int length, float* scratch)
        {
            byte* codes = dst + (start / 2);
            uint maxBits = (FourBitKernels.UseAvx512, kind) switch
            {
                (true, ElementKind.BF16) => FourBitKernels.QuantizeBlockBf16Avx512((ushort*)src + start, length, codes, type),
                (true, _) => FourBitKernels.QuantizeBlockF32Avx512((float*)src + start, length, codes, type),
                (false, ElementKind.BF16) => FourBitKernels.QuantizeBlockBf16Avx2((ushort*)src + start, length, codes, type),
                (false, _) => FourBitKernels.QuantizeBlockF32Avx2((float*)src + start, length, codes, type),
            };
            if (maxBits >= 0x7F80_0000u)
            {
                ThrowNonFinite(LoadBlock(src, kind, start, length, scratch), start, length, tensorName);
            }

            absmax[block] = BitConverter.UInt32BitsToSingle(maxBits);
            if (maxBits == 0)
            {
                FourBitKernels.FillZero(codes, length, type);
            }
        }
    }

    /// <summary>Points at the block as float32: in place for F32 input, else converted into <paramref name="scratch"/>.</summary>
    internal static unsafe float* LoadBlock(byte* src, ElementKind kind, int start, int length, float* scratch)
    {
        switch (kind)
        {
            case ElementKind.F32:
                return (float*)src + start;
            case ElementKind.BF16:
                BFloat16Conversions.ToSingle(new ReadOnlySpan<BFloat16>((BFloat16*)src + start, length), new Span<float>(scratch, length));
                return scratch;
            default:
                TensorPrimitives.ConvertToSingle(new ReadOnlySpan<Half>((Half*)src + start, length), new Span<float>(scratch, length));
                return scratch;
        }
    }

    private static unsafe void ThrowNonFinite(float* values, int start, int length, string? tensorName)
    {
        for (int i = 0; i < length; i++)
        {
            if (!float.IsFinite(values[i]))
            {
                throw new NonFiniteValueException(tensorName, (long)start + i, values[i]);
            }
        }
    }
}
