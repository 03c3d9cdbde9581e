using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace QLoRA.Runtime.Cpu;

/// <summary>
/// Register tiles of the CPU GEMM: acc[MR, NR] = Σₖ a[k, r]·b[k, c] over packed panels (A: k × MR, B: k × NR), one
/// fused multiply-add per product in k order — the same order and roundings on every path, so the AVX-512, AVX2 and
/// scalar kernels give identical bits. The tile is written to <c>tile</c> (MR × NR, row-major) for the epilogue.
/// </summary>
internal static unsafe class GemmMicroKernels
{
    /// <summary>Rows of a register tile.</summary>
    public const int MR = 6;

    /// <summary>Columns of a register tile on the AVX2 and scalar paths (two 8-float vectors).</summary>
    public const int NR = 16;

    /// <summary>Columns of a register tile on the AVX-512 path (two 16-float vectors).</summary>
    public const int NRWide = 32;

    /// <summary>6×16 tile with AVX2 FMA: 12 accumulators, two B vectors and one broadcast A value in 15 of 16 registers.</summary>
    public static void Avx2(float* a, float* b, int k, float* tile) => Avx2Tile(new PackedRows(a), b, k, tile);

    /// <summary>
    /// The 6×16 AVX2 tile reading A's six rows where they lie (float32, row stride <paramref name="lda"/>): for op(A) = A
    /// in float32 no packing pass over A is needed — its six rows stream through the cache side by side. Same products,
    /// same order, same bits as <see cref="Avx2"/> on packed A.
    /// </summary>
    public static void Avx2Rows(float* a, long lda, float* b, int k, float* tile) => Avx2Tile(new StridedRows(a, lda), b, k, tile);

    /// <summary>Where a tile reads A's value for row r at step p: a packed panel, or the rows in place.</summary>
    private interface IRows
    {
        float At(int r, int p);
    }

    private readonly struct PackedRows(float* a) : IRows
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public float At(int r, int p) => a[(p * MR) + r];
    }

    private readonly struct StridedRows(float* a, long lda) : IRows
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public float At(int r, int p) => a[(r * lda) + p];
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Avx2Tile<TRows>(TRows a, float* b, int k, float* tile)
        where TRows : struct, IRows
    {
        Vector256<float> c00 = default, c01 = default, c10 = default, c11 = default, c20 = default, c21 = default;
        Vector256<float> c30 = default, c31 = default, c40 = default, c41 = default, c50 = default, c51 = default;
        for (int p = 0; p < k; p++, b += NR)
        {
            Vector256<float> b0 = Avx.LoadVector256(b);
            Vector256<float> b1 = Avx.LoadVector256(b + 8);
            Vector256<float> x = Vector256.Create(a.At(0, p));
            c00 = Fma.MultiplyAdd(x, b0, c00);
            c01 = Fma.MultiplyAdd(x, b1, c01);
            x = Vector256.Create(a.At(1, p));
            c10 = Fma.MultiplyAdd(x, b0, c10);
            c11 = Fma.MultiplyAdd(x, b1, c11);
            x = Vector256.Create(a.At(2, p));
            c20 = Fma.MultiplyAdd(x, b0, c20);
            c21 = Fma.MultiplyAdd(x, b1, c21);
            x = Vector256.Create(a.At(3, p));
            c30 = Fma.MultiplyAdd(x, b0, c30);
            c31 = Fma.MultiplyAdd(x, b1, c31);
            x = Vector256.Create(a.At(4, p));
            c40 = Fma.MultiplyAdd(x, b0, c40);
            c41 = Fma.MultiplyAdd(x, b1, c41);
            x = Vector256.Create(a.At(5, p));
            c50 = Fma.MultiplyAdd(x, b0, c50);
            c51 = Fma.MultiplyAdd(x, b1, c51);
        }

        c00.Store(tile);
        c01.Store(tile + 8);
        c10.Store(tile + 16);
        c11.Store(tile + 24);
        c20.Store(tile + 32);
        c21.Store(tile + 40);
        c30.Store(tile + 48);
        c31.Store(tile + 56);
        c40.Store(tile + 64);
        c41.Store(tile + 72);
        c50.Store(tile + 80);
        c51.Store(tile + 88);
    }

    /// <summary>6×32 tile with AVX-512 FMA (12 of 32 registers hold accumulators).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Avx512(float* a, float* b, int k, float* tile)
    {
        Vector512<float> c00 = default, c01 = default, c10 = default, c11 = default, c20 = default, c21 = default;
        Vector512<float> c30 = default, c31 = default, c40 = default, c41 = default, c50 = default, c51 = default;
        for (int p = 0; p < k; p++, a += MR, b += NRWide)
        {
            Vector512<float> b0 = Vector512.Load(b);
            Vector512<float> b1 = Vector512.Load(b + 16);
            Vector512<float> x = Vector512.Create(a[0]);
            c00 = Avx512F.FusedMultiplyAdd(x, b0, c00);
            c01 = Avx512F.FusedMultiplyAdd(x, b1, c01);
            x = Vector512.Create(a[1]);
            c10 = Avx512F.FusedMultiplyAdd(x, b0, c10);
            c11 = Avx512F.FusedMultiplyAdd(x, b1, c11);
            x = Vector512.Create(a[2]);
            c20 = Avx512F.FusedMultiplyAdd(x, b0, c20);
            c21 = Avx512F.FusedMultiplyAdd(x, b1, c21);
            x = Vector512.Create(a[3]);
            c30 = Avx512F.FusedMultiplyAdd(x, b0, c30);
            c31 = Avx512F.FusedMultiplyAdd(x, b1, c31);
            x = Vector512.Create(a[4]);
            c40 = Avx512F.FusedMultiplyAdd(x, b0, c40);
            c41 = Avx512F.FusedMultiplyAdd(x, b1, c41);
            x = Vector512.Create(a[5]);
            c50 = Avx512F.FusedMultiplyAdd(x, b0, c50);
            c51 = Avx512F.FusedMultiplyAdd(x, b1, c51);
        }

        c00.Store(tile);
        c01.Store(tile + 16);
        c10.Store(tile + 32);
        c11.Store(tile + 48);
        c20.Store(tile + 64);
        c21.Store(tile + 80);
        c30.Store(tile + 96);
        c31.Store(tile + 112);
        c40.Store(tile + 128);
        c41.Store(tile + 144);
        c50.Store(tile + 160);
        c51.Store(tile + 176);
    }

    /// <summary>The same tile with scalar fused multiply-adds (machines without AVX2, and the reference for the others).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Scalar(float* a, float* b, int k, int nr, float* tile)
    {
        new Span<float>(tile, MR * nr).Clear();
        for (int p = 0; p < k; p++, a += MR, b += nr)
        {
            for (int r = 0; r < MR; r++)
            {
                float x = a[r];
                float* row = tile + (r * nr);
                for (int c = 0; c < nr; c++)
                {
                    row[c] = MathF.FusedMultiplyAdd(x, b[c], row[c]);
                }
            }
        }
    }
}
