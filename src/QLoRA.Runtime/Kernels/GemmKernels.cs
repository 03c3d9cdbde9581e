using ILGPU;

namespace QLoRA.Runtime.Kernels;

/// <summary>Shape and layout of one GEMM: C[M,N] = α·op(A)[M,K]·op(B)[K,N] + β·C, all row-major.</summary>
internal readonly record struct GemmShape(int M, int N, int K, int TransposeA, int TransposeB, int Lda, int Ldb, int Ldc, float Alpha, float Beta);

/// <summary>
/// Portable GEMM (the fallback where cuBLAS is absent, and the CPU accelerator's): A and B of one compute dtype, C of
/// that dtype or float32; products summed in float32. Each thread step computes a 4×4 tile of C in registers,
/// grid-stride over tiles, summing over K in order (deterministic).
/// </summary>
internal static class GemmKernels
{
    private const int Tile = 4;

    public static void Gemm<T, TE, TC, TCE>(ArrayView<T> a, ArrayView<T> b, ArrayView<TC> c, GemmShape s)
        where T : unmanaged
        where TE : struct, IElement<T>
        where TC : unmanaged
        where TCE : struct, IElement<TC>
    {
        int tilesM = (s.M + Tile - 1) / Tile;
        int tilesN = (s.N + Tile - 1) / Tile;
        long tiles = (long)tilesM * tilesN;
        for (long t = Grid.GlobalIndex.X; t < tiles; t += (long)Grid.DimX * Group.DimX)
        {
            int row0 = (int)(t / tilesN) * Tile;
            int col0 = (int)(t % tilesN) * Tile;
            float c00 = 0, c01 = 0, c02 = 0, c03 = 0, c10 = 0, c11 = 0, c12 = 0, c13 = 0;
            float c20 = 0, c21 = 0, c22 = 0, c23 = 0, c30 = 0, c31 = 0, c32 = 0, c33 = 0;
            for (int k = 0; k < s.K; k++)
            {
                float a0 = A<T, TE>(a, s, row0, k), a1 = A<T, TE>(a, s, row0 + 1, k), a2 = A<T, TE>(a, s, row0 + 2, k), a3 = A<T, TE>(a, s, row0 + 3, k);
                float b0 = B<T, TE>(b, s, k, col0), b1 = B<T, TE>(b, s, k, col0 + 1), b2 = B<T, TE>(b, s, k, col0 + 2), b3 = B<T, TE>(b, s, k, col0 + 3);
                c00 += a0 * b0; c01 += a0 * b1; c02 += a0 * b2; c03 += a0 * b3;
                c10 += a1 * b0; c11 += a1 * b1; c12 += a1 * b2; c13 += a1 * b3;
                c20 += a2 * b0; c21 += a2 * b1; c22 += a2 * b2; c23 += a2 * b3;
                c30 += a3 * b0; c31 += a3 * b1; c32 += a3 * b2; c33 += a3 * b3;
            }

            Store<TC, TCE>(c, s, row0, col0, c00, c01, c02, c03);
            Store<TC, TCE>(c, s, row0 + 1, col0, c10, c11, c12, c13);
            Store<TC, TCE>(c, s, row0 + 2, col0, c20, c21, c22, c23);
            Store<TC, TCE>(c, s, row0 + 3, col0, c30, c31, c32, c33);
        }
    }

    // Rows/columns past the edge read as 0 so the tile math needs no branches per product.
    private static float A<T, TE>(ArrayView<T> a, GemmShape s, int i, int k)
        where T : unmanaged
        where TE : struct, IElement<T> =>
        i >= s.M ? 0f : default(TE).Load(s.TransposeA != 0 ? a[((long)k * s.Lda) + i] : a[((long)i * s.Lda) + k]);

    private static float B<T, TE>(ArrayView<T> b, GemmShape s, int k, int j)
        where T : unmanaged
        where TE : struct, IElement<T> =>
        j >= s.N ? 0f : default(TE).Load(s.TransposeB != 0 ? b[((long)j * s.Ldb) + k] : b[((long)k * s.Ldb) + j]);

    private static void Store<TC, TCE>(ArrayView<TC> c, GemmShape s, int i, int j, float v0, float v1, float v2, float v3)
        where TC : unmanaged
        where TCE : struct, IElement<TC>
    {
        if (i >= s.M)
        {
            return;
        }

        long row = (long)i * s.Ldc;
        StoreOne<TC, TCE>(c, s, row + j, j, v0);
        StoreOne<TC, TCE>(c, s, row + j + 1, j + 1, v1);
        StoreOne<TC, TCE>(c, s, row + j + 2, j + 2, v2);
        StoreOne<TC, TCE>(c, s, row + j + 3, j + 3, v3);
    }

    // β = 0 never reads C (it may hold garbage or NaN, as BLAS specifies).
    private static void StoreOne<TC, TCE>(ArrayView<TC> c, GemmShape s, long index, int j, float value)
        where TC : unmanaged
        where TCE : struct, IElement<TC>
    {
        if (j < s.N)
        {
            TCE e = default;
            c[index] = e.Store(s.Beta == 0f ? s.Alpha * value : (s.Alpha * value) + (s.Beta * e.Load(c[index])));
        }
    }
}
