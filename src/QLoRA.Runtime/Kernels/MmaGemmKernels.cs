using ILGPU;
using ILGPU.Runtime.Cuda;

namespace QLoRA.Runtime.Kernels;

/// <summary>Sizes of a tensor-core GEMM C[M,N] = α·A·Bᵀ + β·C with A [M,K] and B [N,K] (the forward y = x Wᵀ).</summary>
internal readonly record struct MmaGemmShape(int M, int N, int K, float Alpha, float Beta, int Half);

/// <summary>
/// Tensor-core GEMM for BF16/F16 operands (dense, or a 4-bit weight decoded as its fragments load) with float32
/// accumulation: each warp (32 consecutive global threads) owns a
/// 16×32 tile of C and walks K in steps of 16, issuing four <c>mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}</c>
/// per step with the A fragment reused across them. Operand fragments follow PTX's m16n8k16 layout (lane = 4·group +
/// t: A rows group and group + 8, columns 2t, 2t + 1, 2t + 8, 2t + 9; B columns group, k rows likewise; C rows group
/// and group + 8, columns 2t and 2t + 1), read straight from global memory, zero past the edges. Where inline PTX is
/// unavailable (the CPU accelerator) each lane computes the same four outputs per 8-column slice in float32, so the
/// tiling, edges and fragment-to-C mapping are exercised everywhere.
/// </summary>
internal static class MmaGemmKernels
{
    public const int TileM = 16, TileN = 32, TileK = 16;

    private const string Bf16Mma = "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%10,%11,%12,%13};";
    private const string F16Mma = "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%10,%11,%12,%13};";

    /// <summary>A is [M, K] (the activations), B is [N, K] (the weight), both in the fragments' layout.</summary>
    public static void Gemm<TA, TB, TC, TCE>(TA a, TB b, ArrayView<TC> c, MmaGemmShape s)
        where TA : struct, IMmaOperand
        where TB : struct, IMmaOperand
        where TC : unmanaged
        where TCE : struct, IElement<TC>
    {
        int tilesM = (s.M + TileM - 1) / TileM;
        int tilesN = (s.N + TileN - 1) / TileN;
        long lanes = (long)tilesM * tilesN * 32;
        // The stride is a multiple of 32 (group sizes are), so all lanes of a warp run the same iterations: mma.sync
        // needs the whole warp converged.
        for (long g = Grid.GlobalIndex.X; g < lanes; g += (long)Grid.DimX * Group.DimX)
        {
            long tile = g / 32;
            int lane = (int)(g % 32);
            int row0 = (int)(tile / tilesN) * TileM, col0 = (int)(tile % tilesN) * TileN;
            int group = lane >> 2, pair = (lane & 3) * 2;
            int rowLo = row0 + group, rowHi = rowLo + 8;
            var acc0 = default(Accumulator);
            var acc1 = default(Accumulator);
            var acc2 = default(Accumulator);
            var acc3 = default(Accumulator);
            for (int k0 = 0; k0 < s.K; k0 += TileK)
            {
                int k = k0 + pair;
                if (CudaAsm.IsSupported)
                {
                    uint a0 = a.Pair(rowLo, k), a1 = a.Pair(rowHi, k), a2 = a.Pair(rowLo, k + 8), a3 = a.Pair(rowHi, k + 8);
                    Mma(ref acc0, s, a0, a1, a2, a3, b.Pair(col0 + group, k), b.Pair(col0 + group, k + 8));
                    Mma(ref acc1, s, a0, a1, a2, a3, b.Pair(col0 + 8 + group, k), b.Pair(col0 + 8 + group, k + 8));
                    Mma(ref acc2, s, a0, a1, a2, a3, b.Pair(col0 + 16 + group, k), b.Pair(col0 + 16 + group, k + 8));
                    Mma(ref acc3, s, a0, a1, a2, a3, b.Pair(col0 + 24 + group, k), b.Pair(col0 + 24 + group, k + 8));
                }
                else
                {
                    Portable(ref acc0, a, b, s, rowLo, col0 + pair, k0);
                    Portable(ref acc1, a, b, s, rowLo, col0 + 8 + pair, k0);
                    Portable(ref acc2, a, b, s, rowLo, col0 + 16 + pair, k0);
                    Portable(ref acc3, a, b, s, rowLo, col0 + 24 + pair, k0);
                }
            }

            Store<TC, TCE>(c, s, acc0, rowLo, col0 + pair);
            Store<TC, TCE>(c, s, acc1, rowLo, col0 + 8 + pair);
            Store<TC, TCE>(c, s, acc2, rowLo, col0 + 16 + pair);
            Store<TC, TCE>(c, s, acc3, rowLo, col0 + 24 + pair);
        }
    }

    /// <summary>One lane's four C values of an m16n8 slice: (group, 2t), (group, 2t + 1), (group + 8, 2t), (group + 8, 2t + 1).</summary>
    internal struct Accumulator
    {
        public float C0, C1, C2, C3;
    }

    private static void Mma(ref Accumulator acc, MmaGemmShape s, uint a0, uint a1, uint a2, uint a3, uint b0, uint b1)
    {
        Input<uint> ia0 = a0, ia1 = a1, ia2 = a2, ia3 = a3;
        Input<uint> ib0 = b0, ib1 = b1;
        Input<float> ic0 = acc.C0, ic1 = acc.C1, ic2 = acc.C2, ic3 = acc.C3;
        Output<float> d0 = default, d1 = default, d2 = default, d3 = default;
        if (s.Half != 0)
        {
            CudaAsm.EmitRef(F16Mma, ref d0, ref d1, ref d2, ref d3, ref ia0, ref ia1, ref ia2, ref ia3, ref ib0, ref ib1, ref ic0, ref ic1, ref ic2, ref ic3);
        }
        else
        {
            CudaAsm.EmitRef(Bf16Mma, ref d0, ref d1, ref d2, ref d3, ref ia0, ref ia1, ref ia2, ref ia3, ref ib0, ref ib1, ref ic0, ref ic1, ref ic2, ref ic3);
        }

        acc.C0 = d0.Value;
        acc.C1 = d1.Value;
        acc.C2 = d2.Value;
        acc.C3 = d3.Value;
    }

    // The same four outputs as one m16n8k16 step, in float32 (no tensor cores).
    private static void Portable<TA, TB>(ref Accumulator acc, TA a, TB b, MmaGemmShape s, int rowLo, int column, int k0)
        where TA : struct, IMmaOperand
        where TB : struct, IMmaOperand
    {
        int kEnd = k0 + TileK < s.K ? k0 + TileK : s.K;
        for (int k = k0; k < kEnd; k++)
        {
            float aLo = a.Element(rowLo, k), aHi = a.Element(rowLo + 8, k);
            float b0 = b.Element(column, k), b1 = b.Element(column + 1, k);
            acc.C0 += aLo * b0;
            acc.C1 += aLo * b1;
            acc.C2 += aHi * b0;
            acc.C3 += aHi * b1;
        }
    }

    private static void Store<TC, TCE>(ArrayView<TC> c, MmaGemmShape s, Accumulator acc, int rowLo, int column)
        where TC : unmanaged
        where TCE : struct, IElement<TC>
    {
        StoreOne<TC, TCE>(c, s, rowLo, column, acc.C0);
        StoreOne<TC, TCE>(c, s, rowLo, column + 1, acc.C1);
        StoreOne<TC, TCE>(c, s, rowLo + 8, column, acc.C2);
        StoreOne<TC, TCE>(c, s, rowLo + 8, column + 1, acc.C3);
    }

    private static void StoreOne<TC, TCE>(ArrayView<TC> c, MmaGemmShape s, int row, int column, float value)
        where TC : unmanaged
        where TCE : struct, IElement<TC>
    {
        if (row < s.M && column < s.N)
        {
            TCE e = default;
            long index = ((long)row * s.N) + column;
            c[index] = e.Store(s.Beta == 0f ? s.Alpha * value : (s.Alpha * value) + (s.Beta * e.Load(c[index])));
        }
    }
}
