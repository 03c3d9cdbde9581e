using System.Buffers;
using System.Numerics.Tensors;
using System.Runtime.Intrinsics;

namespace QLoRA.Runtime.Cpu;

/// <summary>
/// The 4-bit GEMV of the decode step on the CPU: y[b, o] = Σᵢ W[o, i]·x[b, i] for 1…8 rows of x against a packed
/// NF4/FP4 weight, reading each packed byte once. Rows of W are split across tasks; per absmax block the codes are
/// decoded two per byte through a 256-entry pair table, each batch row's dot product with them is taken with SIMD and
/// scaled by the block's absmax once. Sums run block by block in order: results repeat bit for bit.
/// </summary>
internal static unsafe class CpuGemv
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

    /// <summary>y = x·Wᵀ with x [batch, in] and y [batch, out] in host memory.</summary>
    public static void Multiply(byte* packed, ReadOnlySpan<float> table, float[] absmax, int blockSize, int outFeatures, int inFeatures, void* x, void* y, CpuElement element, int batch)
    {
        // Pair table: byte b decodes to (table[b >> 4], table[b & 15]), the first value in the high nibble.
        var pairs = new float[512];
        for (int b = 0; b < 256; b++)
        {
            pairs[2 * b] = table[b >> 4];
            pairs[(2 * b) + 1] = table[b & 15];
        }

        var xs = new float[batch * inFeatures];
        for (int r = 0; r < batch; r++)
        {
            CpuElements.Load(x, element, (long)r * inFeatures, inFeatures, xs.AsSpan(r * inFeatures, inFeatures));
        }

        int tasks = Math.Max(1, Math.Min(outFeatures, Environment.ProcessorCount * 4));
        nint packedBase = (nint)packed, yBase = (nint)y;
        Parallel.For(0, tasks, task =>
        {
            int first = (int)((long)outFeatures * task / tasks), end = (int)((long)outFeatures * (task + 1) / tasks);
            float[] decoded = ArrayPool<float>.Shared.Rent(blockSize);
            float[] sums = ArrayPool<float>.Shared.Rent(batch * (end - first));
            try
            {
                fixed (float* pairTable = pairs)
                fixed (float* values = decoded)
                fixed (float* xBase = xs)
                fixed (float* sumBase = sums)
                {
                    Rows((byte*)packedBase, pairTable, absmax, blockSize, inFeatures, xBase, batch, first, end, values, sumBase);
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
