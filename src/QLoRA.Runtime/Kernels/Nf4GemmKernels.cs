using ILGPU;

namespace QLoRA.Runtime.Kernels;

/// <summary>Sizes of a GEMM against a packed 4-bit weight W [out, in] in blocks of 2^BlockShift.</summary>
internal readonly record struct Nf4GemmShape(int M, int Out, int In, int BlockShift, int TransposeW, float Alpha, float Beta);

/// <summary>
/// C = α·X·op(W) + β·C with W [out, in] decoded on the fly from its packed codes (no dequantized copy of the weight):
/// op(W) = Wᵀ ([in, out], the forward y = x Wᵀ) or W ([out, in], the input gradient dx = dy W). Each thread step
/// computes a 4×4 tile of C, summing over the inner dimension in order (deterministic).
/// </summary>
internal static class Nf4GemmKernels
{
    private const int Tile = 4;

    public static void Gemm<T, TE, TAbsmax>(ArrayView<T> x, ArrayView<byte> packed, TAbsmax absmax, ArrayView<float> table, ArrayView<T> c, Nf4GemmShape s)
        where T : unmanaged
        where TE : struct, IElement<T>
        where TAbsmax : struct, IAbsmaxSource
    {
        int inner = s.TransposeW != 0 ? s.In : s.Out;
        int n = s.TransposeW != 0 ? s.Out : s.In;
        int tilesM = (s.M + Tile - 1) / Tile;
        int tilesN = (n + Tile - 1) / Tile;
        long tiles = (long)tilesM * tilesN;
        for (long t = Grid.GlobalIndex.X; t < tiles; t += (long)Grid.DimX * Group.DimX)
        {
            int row0 = (int)(t / tilesN) * Tile;
            int col0 = (int)(t % tilesN) * Tile;
            float c00 = 0, c01 = 0, c02 = 0, c03 = 0, c10 = 0, c11 = 0, c12 = 0, c13 = 0;
            float c20 = 0, c21 = 0, c22 = 0, c23 = 0, c30 = 0, c31 = 0, c32 = 0, c33 = 0;
            for (int k = 0; k < inner; k++)
            {
                float a0 = X<T, TE>(x, s, inner, row0, k), a1 = X<T, TE>(x, s, inner, row0 + 1, k), a2 = X<T, TE>(x, s, inner, row0 + 2, k), a3 = X<T, TE>(x, s, inner, row0 + 3, k);
                float b0 = W(packed, absmax, table, s, n, k, col0), b1 = W(packed, absmax, table, s, n, k, col0 + 1);
                float b2 = W(packed, absmax, table, s, n, k, col0 + 2), b3 = W(packed, absmax, table, s, n, k, col0 + 3);
                c00 += a0 * b0; c01 += a0 * b1; c02 += a0 * b2; c03 += a0 * b3;
                c10 += a1 * b0; c11 += a1 * b1; c12 += a1 * b2; c13 += a1 * b3;
                c20 += a2 * b0; c21 += a2 * b1; c22 += a2 * b2; c23 += a2 * b3;
                c30 += a3 * b0; c31 += a3 * b1; c32 += a3 * b2; c33 += a3 * b3;
            }

            Store<T, TE>(c, s, n, row0, col0, c00, c01, c02, c03);
            Store<T, TE>(c, s, n, row0 + 1, col0, c10, c11, c12, c13);
            Store<T, TE>(c, s, n, row0 + 2, col0, c20, c21, c22, c23);
            Store<T, TE>(c, s, n, row0 + 3, col0, c30, c31, c32, c33);
        }
    }

    private static float X<T, TE>(ArrayView<T> x, Nf4GemmShape s, int inner, int i, int k)
        where T : unmanaged
        where TE : struct, IElement<T> => i >= s.M ? 0f : default(TE).Load(x[((long)i * inner) + k]);

    // op(W)[k, j]: W[j, k] for the forward (Wᵀ), W[k, j] for the input gradient; 0 past the edge.
    private static float W<TAbsmax>(ArrayView<byte> packed, TAbsmax absmax, ArrayView<float> table, Nf4GemmShape s, int n, int k, int j)
        where TAbsmax : struct, IAbsmaxSource
    {
        if (j >= n)
        {
            return 0f;
        }

        long index = s.TransposeW != 0 ? ((long)j * s.In) + k : ((long)k * s.In) + j;
        byte b = packed[index >> 1];
        int code = (index & 1) == 0 ? b >> 4 : b & 15;
        return table[code] * absmax.Get(index >> s.BlockShift);
    }

    private static void Store<T, TE>(ArrayView<T> c, Nf4GemmShape s, int n, int i, int j, float v0, float v1, float v2, float v3)
        where T : unmanaged
        where TE : struct, IElement<T>
    {
        if (i >= s.M)
        {
            return;
        }

        long row = (long)i * n;
        StoreOne<T, TE>(c, s, n, row + j, j, v0);
        StoreOne<T, TE>(c, s, n, row + j + 1, j + 1, v1);
        StoreOne<T, TE>(c, s, n, row + j + 2, j + 2, v2);
        StoreOne<T, TE>(c, s, n, row + j + 3, j + 3, v3);
    }

    private static void StoreOne<T, TE>(ArrayView<T> c, Nf4GemmShape s, int n, long index, int j, float value)
        where T : unmanaged
        where TE : struct, IElement<T>
    {
        if (j < n)
        {
            TE e = default;
            c[index] = e.Store(s.Beta == 0f ? s.Alpha * value : (s.Alpha * value) + (s.Beta * e.Load(c[index])));
        }
    }
}
