using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using QLoRA.Runtime.Kernels;

namespace QLoRA.Runtime.Cpu;

/// <summary>Where a CPU GEMM writes: C [M, N] row-major in host memory, of the compute dtype or float32.</summary>
internal readonly unsafe struct CpuOutput(void* data, CpuElement element, int ld)
{
    public void* Data { get; } = data;

    public CpuElement Element { get; } = element;

    public int Ld { get; } = ld;
}

/// <summary>
/// The CPU accelerator's GEMM: C = α·op(A)·op(B) + β·C as a blocked SIMD kernel over the accelerator's buffers in place.
/// op(B) is packed once into column panels (converted to float32 — or decoded from 4 bits — while packing); rows of C
/// are cut into blocks, one per task, each packing its rows of op(A) and running register tiles over every panel.
/// </summary>
/// <remarks>
/// Every element of C is one register-tile sum over the whole of K, in k order, with one fused multiply-add per product,
/// then α·sum + β·C rounded once to C's dtype: the result does not depend on the thread count or the vector path, and
/// repeats bit for bit. β = 0 never reads C.
/// </remarks>
internal static unsafe partial class CpuGemm
{
    // Rows of C per task: eight register tiles, whose packed A (8·6 × K floats) stays in L2 while the panels stream by.
    private const int BlockRows = GemmMicroKernels.MR * 8;

    /// <summary>Widest vector path in bits (512, 256, or 0 for scalar); tests force each one.</summary>
    internal static int VectorWidth { get; set; } =
        Avx512F.IsSupported ? 512 : Avx2.IsSupported && Fma.IsSupported ? 256 : 0;

    /// <summary>Computes C = α·op(A)·op(B) + β·C for op(A) [m, k] and op(B) [k, n].</summary>
    public static void Multiply<TB>(CpuMatrix a, TB b, CpuOutput c, int m, int n, int k, float alpha, float beta)
        where TB : struct, IPanelSource
    {
        if (m == 0 || n == 0)
        {
            return;
        }

        int width = VectorWidth;
        int nr = width == 512 ? GemmMicroKernels.NRWide : GemmMicroKernels.NR;
        int panels = (n + nr - 1) / nr;
        long panelFloats = (long)Math.Max(k, 1) * nr;
        float* packedB = (float*)NativeMemory.AlignedAlloc(checked((nuint)(panels * panelFloats * sizeof(float))), 64);
        try
        {
            nint bBase = (nint)packedB;
            Parallel.For(0, panels, jp =>
            {
                int j0 = jp * nr;
                b.Pack(j0, Math.Min(nr, n - j0), k, nr, (float*)bBase + (jp * panelFloats));
            });

            int blocks = (m + BlockRows - 1) / BlockRows;
            Parallel.For(0, blocks, block => RowBlock(a, bBase, c, block * BlockRows, Math.Min(BlockRows, m - (block * BlockRows)), n, k, nr, panels, alpha, beta, width));
        }
        finally
        {
            NativeMemory.AlignedFree(packedB);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void RowBlock(CpuMatrix a, nint bBase, CpuOutput c, int i0, int rows, int n, int k, int nr, int panels, float alpha, float beta, int width)
    {
        const int MR = GemmMicroKernels.MR;
        int aPanels = (rows + MR - 1) / MR;
        long aPanelFloats = (long)Math.Max(k, 1) * MR;
        float* packedA = (float*)NativeMemory.AlignedAlloc(checked((nuint)(aPanels * aPanelFloats * sizeof(float))), 64);
        float* tile = stackalloc float[MR * GemmMicroKernels.NRWide];
        // Full panels of a float32, untransposed A are read in place by the AVX2 tile; the rest is packed.
        bool inPlace = width == 256 && !a.Transposed && a.Element == CpuElement.F32;
        try
        {
            for (int ip = 0; ip < aPanels; ip++)
            {
                if (!inPlace || rows - (ip * MR) < MR)
                {
                    PackA(a, i0 + (ip * MR), Math.Min(MR, rows - (ip * MR)), k, packedA + (ip * aPanelFloats));
                }
            }

            long panelFloats = (long)Math.Max(k, 1) * nr;
            for (int jp = 0; jp < panels; jp++)
            {
                float* panel = (float*)bBase + (jp * panelFloats);
                int j0 = jp * nr;
                int columns = Math.Min(nr, n - j0);
                for (int ip = 0; ip < aPanels; ip++)
                {
                    float* pa = packedA + (ip * aPanelFloats);
                    switch (width)
                    {
                        case 512:
                            GemmMicroKernels.Avx512(pa, panel, k, tile);
                            break;
                        case 256 when inPlace && rows - (ip * MR) >= MR:
                            GemmMicroKernels.Avx2Rows((float*)a.Data + ((long)(i0 + (ip * MR)) * a.Ld), a.Ld, panel, k, tile);
                            break;
                        case 256:
                            GemmMicroKernels.Avx2(pa, panel, k, tile);
                            break;
                        default:
                            GemmMicroKernels.Scalar(pa, panel, k, nr, tile);
                            break;
                    }

                    Store(c, tile, nr, i0 + (ip * MR), j0, Math.Min(MR, rows - (ip * MR)), columns, alpha, beta);
                }
            }
        }
        finally
        {
            NativeMemory.AlignedFree(packedA);
        }
    }

    // dst[p·MR + r] = op(A)[i0 + r, p]; rows past the edge are zero.
    private static void PackA(CpuMatrix a, int i0, int rows, int k, float* dst)
    {
        const int MR = GemmMicroKernels.MR;
        if (a.Transposed && a.Element == CpuElement.F32 && rows == MR)
        {
            // op(A) = Aᵀ (the weight gradient dyᵀ·x): the panel's k-th column is six contiguous floats of row k of A.
            for (int p = 0; p < k; p++)
            {
                float* src = (float*)a.Data + ((long)p * a.Ld) + i0;
                for (int r = 0; r < MR; r++)
                {
                    dst[(p * MR) + r] = src[r];
                }
            }

            return;
        }

        for (int r = 0; r < MR; r++)
        {
            if (r >= rows)
            {
                for (int p = 0; p < k; p++)
                {
                    dst[(p * MR) + r] = 0f;
                }

                continue;
            }

            if (!a.Transposed && a.Element == CpuElement.F32)
            {
                float* src = (float*)a.Data + ((long)(i0 + r) * a.Ld);
                for (int p = 0; p < k; p++)
                {
                    dst[(p * MR) + r] = src[p];
                }
            }
            else
            {
                for (int p = 0; p < k; p++)
                {
                    dst[(p * MR) + r] = a.Get(i0 + r, p);
                }
            }
        }
    }

    // C[i, j] = α·tile + β·C[i, j], rounded once to C's dtype, for the tile's valid rows and columns.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Store(CpuOutput c, float* tile, int nr, int i0, int j0, int rows, int columns, float alpha, float beta)
    {
        for (int r = 0; r < rows; r++)
        {
            float* sums = tile + (r * nr);
            long row = ((long)(i0 + r) * c.Ld) + j0;
            switch (c.Element)
            {
                case CpuElement.F32:
                    float* dst = (float*)c.Data + row;
                    int j = 0;
                    if (Vector256.IsHardwareAccelerated)
                    {
                        var va = Vector256.Create(alpha);
                        var vb = Vector256.Create(beta);
                        for (; j <= columns - 8; j += 8)
                        {
                            Vector256<float> v = Vector256.Load(sums + j) * va;
                            (beta == 0f ? v : v + (Vector256.Load(dst + j) * vb)).Store(dst + j);
                        }
                    }

                    for (; j < columns; j++)
                    {
                        dst[j] = beta == 0f ? alpha * sums[j] : (alpha * sums[j]) + (beta * dst[j]);
                    }

                    break;
                case CpuElement.BF16:
                    StoreNarrow<Bf16Element>((ushort*)c.Data + row, sums, columns, alpha, beta);
                    break;
                default:
                    StoreNarrow<F16Element>((ushort*)c.Data + row, sums, columns, alpha, beta);
                    break;
            }
        }
    }

    private static void StoreNarrow<TE>(ushort* dst, float* sums, int columns, float alpha, float beta)
        where TE : struct, IElement<ushort>
    {
        TE e = default;
        for (int j = 0; j < columns; j++)
        {
            dst[j] = e.Store(beta == 0f ? alpha * sums[j] : (alpha * sums[j]) + (beta * e.Load(dst[j])));
        }
    }
}
