using System.Buffers;
using System.Numerics.Tensors;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace QLoRA.Runtime.Cpu;

/// <summary>
/// The 4-bit GEMV of the decode step on the CPU: y[b, o] = Σᵢ W[o, i]·x[b, i] for 1…8 rows of x against a packed
/// NF4/FP4 weight, reading each packed byte once. Rows of W are split across tasks. Three paths (CpuGemv.Avx512.cs,
/// CpuGemv.Avx2.cs, and here the scalar one: per absmax block the codes decoded two per byte through a 256-entry pair
/// table, each batch row's dot product with them scaled by the block's absmax once). Each path sums in a fixed order
/// whatever the thread count or batch: results repeat bit for bit, and a row of x gets the same bits alone and batched.
/// </summary>
internal static unsafe partial class CpuGemv
{
    // Rows [first, end) of W against every row of x: sums[(o − first)·batch + r].
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
    private static void Rows(byte* packed, float* pairTable, float[] absmax, int blockSize, int inFeatures, float* xs, int batch, int first, int end, float* values, float* sums)
    {
        for (int o = first; o < end; o++)
        {
            float* rowSums = sums + ((o - first) * batch);
            for (int r = 0; r < batch; r++)
            {
                rowSums[r] = 0f;
            }

            long e0 = (long)o * inFeatures;
            for (int i = 0; i < inFeatures;)
            {
                long block = (e0 + i) / blockSize;
                int length = (int)Math.Min(inFeatures - i, ((block + 1) * blockSize) - (e0 + i));
                byte* bytes = packed + ((e0 + i) >> 1); // e0 + i is even: in and blocks are multiples of 32
                for (int j = 0; j < length / 2; j++)
                {
                    *(long*)(values + (2 * j)) = *(long*)(pairTable + (2 * bytes[j]));
                }

                float scale = absmax[block];
                for (int r = 0; r < batch; r++)
                {
                    rowSums[r] += scale * Dot(values, xs + (r * inFeatures) + i, length);
                }

                i += length;
            }
        }
    }

    // x regrouped per 2·half elements as [the half even-indexed, the half odd-indexed]: half packed bytes hold 2·half codes,
    // the even-indexed element of each pair in the high nibble (bitsandbytes' order), which the vector paths decode into
    // one register of even and one of odd elements.
    private static float[] Permute(float[] xs, int count, int half)
    {
        var permuted = new float[count];
        for (int g = 0; g < count; g += 2 * half)
        {
            for (int t = 0; t < half; t++)
            {
                permuted[g + t] = xs[g + (2 * t)];
                permuted[g + half + t] = xs[g + (2 * t) + 1];
            }
        }

        return permuted;
    }

    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> Lookup16(Vector256<float> low, Vector256<float> high, Vector256<int> index) =>
        Avx.BlendVariable(Avx2.PermuteVar8x32(low, index), Avx2.PermuteVar8x32(high, index), (index << 28).AsSingle());

    // Σ a·b over a block (length a multiple of 32): four 8-lane accumulators, then a fixed-order reduction.
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
    private static float Dot(float* a, float* b, int length)
    {
        if (!Vector256.IsHardwareAccelerated)
        {
            return TensorPrimitives.Dot(new ReadOnlySpan<float>(a, length), new ReadOnlySpan<float>(b, length));
        }

        Vector256<float> s0 = default, s1 = default, s2 = default, s3 = default;
        for (int j = 0; j < length; j += 32)
        {
            s0 = Vector256.FusedMultiplyAdd(Vector256.Load(a + j), Vector256.Load(b + j), s0);
            s1 = Vector256.FusedMultiplyAdd(Vector256.Load(a + j + 8), Vector256.Load(b + j + 8), s1);
            s2 = Vector256.FusedMultiplyAdd(Vector256.Load(a + j + 16), Vector256.Load(b + j + 16), s2);
            s3 = Vector256.FusedMultiplyAdd(Vector256.Load(a + j + 24), Vector256.Load(b + j + 24), s3);
        }

        return Vector256.Sum((s0 + s1) + (s2 + s3));
    }

    /// <summary>
    /// Widest vector path in bits (512, 256, or 0 for scalar) this CPU runs. Fixed for the process: the paths round
    /// differently, and a sequence must get the same bits at every decode step (tests pass a width instead).
    /// </summary>
    internal static int VectorWidth { get; } = Avx512F.IsSupported ? 512 : Avx2.IsSupported && Fma.IsSupported ? 256 : 0;

    /// <summary>y = x·Wᵀ with x [batch, in] (batch 1…8, in a multiple of 32) and y [batch, out] in host memory.</summary>
    /// <param name="packed">The packed codes, two per byte (the even-indexed element in the high nibble).</param>
    /// <param name="table">The 16 code values (NF4 or FP4).</param>
    /// <param name="absmax">One scale per block (double quantization already decoded).</param>
    /// <param name="blockSize">Elements per absmax block (a power of two, 32…4096).</param>
    /// <param name="outFeatures">Rows of W.</param>
    /// <param name="inFeatures">Columns of W and of x.</param>
    /// <param name="x">[batch, in] in <paramref name="element"/>.</param>
    /// <param name="y">[batch, out] in <paramref name="element"/>.</param>
    /// <param name="element">The element type of x and y.</param>
    /// <param name="batch">Rows of x.</param>
    /// <param name="width">The vector path (512, 256, 0); default <see cref="VectorWidth"/>; a wider one than the CPU has is refused.</param>
    /// <exception cref="NotSupportedException"><paramref name="width"/> names a path this CPU lacks.</exception>
    public static void Multiply(byte* packed, float[] table, float[] absmax, int blockSize, int outFeatures, int inFeatures, void* x, void* y, CpuElement element, int batch, int? width = null)
    {
        int path = width ?? VectorWidth;
        if ((path >= 512 && !Avx512F.IsSupported) || (path >= 256 && !(Avx2.IsSupported && Fma.IsSupported)))
        {
            throw new NotSupportedException($"This CPU has no {path}-bit GEMV path.");
        }

        var xs = new float[batch * inFeatures];
        for (int r = 0; r < batch; r++)
        {
            CpuElements.Load(x, element, (long)r * inFeatures, inFeatures, xs.AsSpan(r * inFeatures, inFeatures));
        }

        // For the vector paths: x regrouped per vector pair, 16 + 16 (AVX-512) or 8 + 8 (AVX2) elements (in is a multiple
        // of 32, so groups never straddle a row).
        bool wide = path >= 512;
        bool simd = path >= 256;
        float[] permuted = wide ? Permute(xs, batch * inFeatures, 16) : simd ? Permute(xs, batch * inFeatures, 8) : xs;

        // For the scalar path, a pair table: byte b decodes to (table[b >> 4], table[b & 15]), the first value in the high nibble.
        float[] pairs = simd ? [] : new float[512];
        for (int b = 0; b < pairs.Length / 2; b++)
        {
            pairs[2 * b] = table[b >> 4];
            pairs[(2 * b) + 1] = table[b & 15];
        }

        int tasks = Math.Max(1, Math.Min(outFeatures, Environment.ProcessorCount * 4));
        nint packedBase = (nint)packed, yBase = (nint)y;
        Parallel.For(0, tasks, task =>
        {
            int first = (int)((long)outFeatures * task / tasks), end = (int)((long)outFeatures * (task + 1) / tasks);
            float[] decoded = ArrayPool<float>.Shared.Rent(simd ? 1 : blockSize);
            float[] sums = ArrayPool<float>.Shared.Rent(batch * (end - first));
            try
            {
                fixed (float* pairTable = pairs)
                fixed (float* values = decoded)
                fixed (float* xBase = xs)
                fixed (float* xPermuted = permuted)
                fixed (float* sumBase = sums)
                fixed (float* codeTable = table)
                {
                    if (wide)
                    {
                        WeightRows<Avx512Path>((byte*)packedBase, codeTable, absmax, blockSize, inFeatures, xPermuted, sumBase, batch, first, end);
                    }
                    else if (simd)
                    {
                        WeightRows<Avx2Path>((byte*)packedBase, codeTable, absmax, blockSize, inFeatures, xPermuted, sumBase, batch, first, end);
                    }
                    else
                    {
                        Rows((byte*)packedBase, pairTable, absmax, blockSize, inFeatures, xBase, batch, first, end, values, sumBase);
                    }
                }

                for (int r = 0; r < batch; r++)
                {
                    Span<float> column = new float[end - first];
                    for (int o = first; o < end; o++)
                    {
                        column[o - first] = sums[((o - first) * batch) + r];
                    }

                    CpuElements.Store(column, (void*)yBase, element, ((long)r * outFeatures) + first);
                }
            }
            finally
            {
                ArrayPool<float>.Shared.Return(decoded);
                ArrayPool<float>.Shared.Return(sums);
            }
        });
    }
}
