using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace QLoRA.Runtime.Cpu;

/// <summary>
/// The CPU GEMM for a few rows of A against Bᵀ (the decode step's lm_head, LoRA's x·Aᵀ): C = α·op(A)·Bᵀ + β·C with
/// M ≤ one vector and B stored [N, K]. Packing B into panels would copy the whole of it per call (the lm_head of a 1B
/// model: 1 GB written for 8 KB of output), so the roles swap: B's rows are read where they lie, twelve side by side,
/// each value broadcast against a vector of op(A)ᵀ's column (M lanes), and the transposed tile is stored as C. Every
/// element is still one fused multiply-add per product in k order from zero, then α·sum + β·C rounded once — the same
/// bits as the panel path (a product is the same whichever operand is broadcast).
/// </summary>
internal static unsafe partial class CpuGemm
{
    // Rows of B per register tile: twelve accumulators of one vector each (enough FMAs in flight to hide their latency).
    private const int SmallTileRows = 12;

    /// <summary>Whether the small-M path may be taken (tests compare it with the panel path).</summary>
    internal static bool SmallMEnabled { get; set; } = true;

    /// <summary>Runs C = α·op(A)·Bᵀ + β·C by the small-M path when it applies; false leaves C untouched.</summary>
    public static bool TryMultiplySmallM(CpuMatrix a, CpuMatrix b, CpuOutput c, int m, int n, int k, float alpha, float beta)
    {
        int width = VectorWidth;
        int lanes = width == 512 ? 16 : width == 256 ? 8 : 0;
        if (!SmallMEnabled || lanes == 0 || m == 0 || m > lanes || !b.Transposed || n < SmallTileRows || k == 0)
        {
            return false;
        }

        // op(A)ᵀ packed as k vectors of `lanes` floats (columns past M zero): at[p·lanes + i] = op(A)[i, p].
        float* at = (float*)NativeMemory.AlignedAlloc(checked((nuint)((long)k * lanes * sizeof(float))), 64);
        try
        {
            for (int p = 0; p < k; p++)
            {
                for (int i = 0; i < lanes; i++)
                {
                    at[((long)p * lanes) + i] = i < m ? a.Get(i, p) : 0f;
                }
            }

            int tiles = (n + SmallTileRows - 1) / SmallTileRows;
            int tasks = Math.Max(1, Math.Min(tiles, Environment.ProcessorCount * 4));
            nint atBase = (nint)at;
            Parallel.For(0, tasks, task =>
            {
                int first = (int)((long)tiles * task / tasks), end = (int)((long)tiles * (task + 1) / tasks);
                switch (b.Element)
                {
                    case CpuElement.F32:
                        SmallMTiles<F32Row>(b, (float*)atBase, c, m, n, k, lanes, first, end, alpha, beta);
                        break;
                    case CpuElement.BF16:
                        SmallMTiles<Bf16Row>(b, (float*)atBase, c, m, n, k, lanes, first, end, alpha, beta);
                        break;
                    default:
                        SmallMTiles<F16Row>(b, (float*)atBase, c, m, n, k, lanes, first, end, alpha, beta);
                        break;
                }
            });
        }
        finally
        {
            NativeMemory.AlignedFree(at);
        }

        return true;
    }

    /// <summary>Reads B's value at an element index as float32 (exact for all three element types).</summary>
    private interface IBRow
    {
        static abstract float Get(void* data, long index);
    }

    private struct F32Row : IBRow
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static float Get(void* data, long index) => ((float*)data)[index];
    }

    private struct Bf16Row : IBRow
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static float Get(void* data, long index) => BitConverter.Int32BitsToSingle(((ushort*)data)[index] << 16);
    }

    private struct F16Row : IBRow
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static float Get(void* data, long index) => (float)BitConverter.UInt16BitsToHalf(((ushort*)data)[index]);
    }

    // Tiles [first, end) of twelve B rows each: the register tile, or scalar FMAs for the last, partial one.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void SmallMTiles<TRow>(CpuMatrix b, float* at, CpuOutput c, int m, int n, int k, int lanes, int first, int end, float alpha, float beta)
        where TRow : struct, IBRow
    {
        float* transposed = stackalloc float[SmallTileRows * 16];
        float* tile = stackalloc float[16 * SmallTileRows];
        for (int t = first; t < end; t++)
        {
            int j0 = t * SmallTileRows;
            int rows = Math.Min(SmallTileRows, n - j0);
            long row0 = (long)j0 * b.Ld;
            if (rows == SmallTileRows && lanes == 16)
            {
                Tile512<TRow>(b.Data, row0, b.Ld, at, k, transposed);
            }
            else if (rows == SmallTileRows)
            {
                Tile256<TRow>(b.Data, row0, b.Ld, at, k, transposed);
            }
            else
            {
                for (int r = 0; r < rows; r++)
                {
                    for (int i = 0; i < m; i++)
                    {
                        float sum = 0f;
                        for (int p = 0; p < k; p++)
                        {
                            sum = MathF.FusedMultiplyAdd(TRow.Get(b.Data, row0 + ((long)r * b.Ld) + p), at[((long)p * lanes) + i], sum);
                        }

                        transposed[(r * lanes) + i] = sum;
                    }
                }
            }

            // transposed[r, i] = C[i, j0 + r] before the epilogue: turned into an M × rows tile for the shared store.
            for (int i = 0; i < m; i++)
            {
                for (int r = 0; r < rows; r++)
                {
                    tile[(i * SmallTileRows) + r] = transposed[(r * lanes) + i];
                }
            }

            Store(c, tile, SmallTileRows, 0, j0, m, rows, alpha, beta);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Tile512<TRow>(void* b, long row0, long ld, float* at, int k, float* transposed)
        where TRow : struct, IBRow
    {
        Vector512<float> c0 = default, c1 = default, c2 = default, c3 = default, c4 = default, c5 = default;
        Vector512<float> c6 = default, c7 = default, c8 = default, c9 = default, c10 = default, c11 = default;
        for (int p = 0; p < k; p++, at += 16)
        {
            Vector512<float> v = Vector512.Load(at);
            long e = row0 + p;
            c0 = Avx512F.FusedMultiplyAdd(Vector512.Create(TRow.Get(b, e)), v, c0);
            c1 = Avx512F.FusedMultiplyAdd(Vector512.Create(TRow.Get(b, e + ld)), v, c1);
            c2 = Avx512F.FusedMultiplyAdd(Vector512.Create(TRow.Get(b, e + (2 * ld))), v, c2);
            c3 = Avx512F.FusedMultiplyAdd(Vector512.Create(TRow.Get(b, e + (3 * ld))), v, c3);
            c4 = Avx512F.FusedMultiplyAdd(Vector512.Create(TRow.Get(b, e + (4 * ld))), v, c4);
            c5 = Avx512F.FusedMultiplyAdd(Vector512.Create(TRow.Get(b, e + (5 * ld))), v, c5);
            c6 = Avx512F.FusedMultiplyAdd(Vector512.Create(TRow.Get(b, e + (6 * ld))), v, c6);
            c7 = Avx512F.FusedMultiplyAdd(Vector512.Create(TRow.Get(b, e + (7 * ld))), v, c7);
            c8 = Avx512F.FusedMultiplyAdd(Vector512.Create(TRow.Get(b, e + (8 * ld))), v, c8);
            c9 = Avx512F.FusedMultiplyAdd(Vector512.Create(TRow.Get(b, e + (9 * ld))), v, c9);
            c10 = Avx512F.FusedMultiplyAdd(Vector512.Create(TRow.Get(b, e + (10 * ld))), v, c10);
            c11 = Avx512F.FusedMultiplyAdd(Vector512.Create(TRow.Get(b, e + (11 * ld))), v, c11);
        }

        c0.Store(transposed);
        c1.Store(transposed + 16);
        c2.Store(transposed + 32);
        c3.Store(transposed + 48);
        c4.Store(transposed + 64);
        c5.Store(transposed + 80);
        c6.Store(transposed + 96);
        c7.Store(transposed + 112);
        c8.Store(transposed + 128);
        c9.Store(transposed + 144);
        c10.Store(transposed + 160);
        c11.Store(transposed + 176);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Tile256<TRow>(void* b, long row0, long ld, float* at, int k, float* transposed)
        where TRow : struct, IBRow
    {
        Vector256<float> c0 = default, c1 = default, c2 = default, c3 = default, c4 = default, c5 = default;
        Vector256<float> c6 = default, c7 = default, c8 = default, c9 = default, c10 = default, c11 = default;
        for (int p = 0; p < k; p++, at += 8)
        {
            Vector256<float> v = Vector256.Load(at);
            long e = row0 + p;
            c0 = Fma.MultiplyAdd(Vector256.Create(TRow.Get(b, e)), v, c0);
            c1 = Fma.MultiplyAdd(Vector256.Create(TRow.Get(b, e + ld)), v, c1);
            c2 = Fma.MultiplyAdd(Vector256.Create(TRow.Get(b, e + (2 * ld))), v, c2);
            c3 = Fma.MultiplyAdd(Vector256.Create(TRow.Get(b, e + (3 * ld))), v, c3);
            c4 = Fma.MultiplyAdd(Vector256.Create(TRow.Get(b, e + (4 * ld))), v, c4);
            c5 = Fma.MultiplyAdd(Vector256.Create(TRow.Get(b, e + (5 * ld))), v, c5);
            c6 = Fma.MultiplyAdd(Vector256.Create(TRow.Get(b, e + (6 * ld))), v, c6);
            c7 = Fma.MultiplyAdd(Vector256.Create(TRow.Get(b, e + (7 * ld))), v, c7);
            c8 = Fma.MultiplyAdd(Vector256.Create(TRow.Get(b, e + (8 * ld))), v, c8);
            c9 = Fma.MultiplyAdd(Vector256.Create(TRow.Get(b, e + (9 * ld))), v, c9);
            c10 = Fma.MultiplyAdd(Vector256.Create(TRow.Get(b, e + (10 * ld))), v, c10);
            c11 = Fma.MultiplyAdd(Vector256.Create(TRow.Get(b, e + (11 * ld))), v, c11);
        }

        c0.Store(transposed);
        c1.Store(transposed + 8);
        c2.Store(transposed + 16);
        c3.Store(transposed + 24);
        c4.Store(transposed + 32);
        c5.Store(transposed + 40);
        c6.Store(transposed + 48);
        c7.Store(transposed + 56);
        c8.Store(transposed + 64);
        c9.Store(transposed + 72);
        c10.Store(transposed + 80);
        c11.Store(transposed + 88);
    }
}
