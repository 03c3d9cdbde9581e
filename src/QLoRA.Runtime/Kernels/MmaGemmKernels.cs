using ILGPU;
using ILGPU.Runtime.Cuda;

namespace QLoRA.Runtime.Kernels;

/// <summary>Sizes of a tensor-core GEMM C[M,N] = α·A·Bᵀ + β·C with operands A [M,K] and B [N,K].</summary>
internal readonly record struct MmaGemmShape(int M, int N, int K, float Alpha, float Beta);

/// <summary>
/// Which 16-bit type a tensor-core GEMM multiplies, as a type argument: each instantiation holds exactly one kind of
/// mma.sync, with no branch between them. (A run-time flag put both behind a branch, and ptxas then kept every mma
/// operand in local memory: 184 local loads and stores in the machine code, around every mma of the inner loop.)
/// </summary>
internal interface IMmaHalf
{
    /// <summary>IEEE binary16 (true) or bfloat16 (false).</summary>
    bool IsF16 { get; }
}

/// <summary>
/// Block-tiled tensor-core GEMM for BF16/F16 operands (dense, or a 4-bit weight decoded while it is staged) with float32
/// accumulation. A group of four warps owns a 64×64 tile of C; for each 32-wide slice of K the group stages A and B
/// (64 rows × 16 element pairs each) in shared memory — consecutive threads load consecutive pairs of a row, and each
/// operand decides how a pair is read (in place when transposed, decoded when 4-bit) — then each warp computes its
/// 32×32 sub-tile with eight <c>mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}</c> per 16 of K, reading fragments in
/// PTX's m16n8k16 layout from rows padded to 20 words (conflict-free). Where inline PTX is unavailable (the CPU
/// accelerator) the same fragments are multiplied by an emulation of mma.sync that gathers the other lanes' registers
/// with warp shuffles, so staging, fragment layout, edges and stores are all tested without a GPU.
/// Needs groups of <see cref="Threads"/> threads in warps of 32.
/// </summary>
internal static class MmaGemmKernels
{
    public const int Threads = 128, BlockM = 64, BlockN = 64, BlockK = 32;
    private const int PairsPerRow = BlockK / 2, Stride = PairsPerRow + 4;

    private const string Bf16Mma = "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%10,%11,%12,%13};";
    private const string F16Mma = "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%10,%11,%12,%13};";

    public static void Gemm<TA, TB, TC, TCE, TH>(TA a, TB b, ArrayView<TC> c, MmaGemmShape s)
        where TA : struct, IMmaOperand
        where TB : struct, IMmaOperand
        where TC : unmanaged
        where TCE : struct, IElement<TC>
        where TH : struct, IMmaHalf
    {
        ArrayView<uint> sA = SharedMemory.Allocate<uint>(BlockM * Stride);
        ArrayView<uint> sB = SharedMemory.Allocate<uint>(BlockN * Stride);
        int thread = Group.IdxX, warp = thread / 32, lane = thread % 32, group = lane >> 2, t = lane & 3;
        int warpRow = (warp / 2) * 32, warpCol = (warp % 2) * 32;
        int tilesN = (s.N + BlockN - 1) / BlockN;
        int tiles = ((s.M + BlockM - 1) / BlockM) * tilesN;
        for (int tile = Grid.IdxX; tile < tiles; tile += Grid.DimX)
        {
            int row0 = (tile / tilesN) * BlockM, col0 = (tile % tilesN) * BlockN;
            // Accumulators of the warp's 2 (m16) × 4 (n8) slices: cMN.
            Accumulator c00 = default, c01 = default, c02 = default, c03 = default, c10 = default, c11 = default, c12 = default, c13 = default;
            for (int k0 = 0; k0 < s.K; k0 += BlockK)
            {
                // Consecutive threads take consecutive pairs of a row, or consecutive rows when the operand is
                // stored transposed, so either way they read neighbouring memory.
                for (int i = thread; i < BlockM * PairsPerRow; i += Threads)
                {
                    int r = a.Transposed ? i % BlockM : i / PairsPerRow, p = a.Transposed ? i / BlockM : i % PairsPerRow;
                    sA[(r * Stride) + p] = a.Pair(row0 + r, k0 + (2 * p));
                    r = b.Transposed ? i % BlockN : i / PairsPerRow;
                    p = b.Transposed ? i / BlockN : i % PairsPerRow;
                    sB[(r * Stride) + p] = b.Pair(col0 + r, k0 + (2 * p));
                }

                Group.Barrier();
                for (int kk = 0; kk < BlockK; kk += 16)
                {
                    int pair = (kk / 2) + t;
                    int lo0 = ((warpRow + group) * Stride) + pair, lo1 = lo0 + (16 * Stride);
                    Fragment a0 = new(sA[lo0], sA[lo0 + (8 * Stride)], sA[lo0 + 4], sA[lo0 + (8 * Stride) + 4]);
                    Fragment a1 = new(sA[lo1], sA[lo1 + (8 * Stride)], sA[lo1 + 4], sA[lo1 + (8 * Stride) + 4]);
                    int bAt = ((warpCol + group) * Stride) + pair, n8 = 8 * Stride;
                    uint b00 = sB[bAt], b01 = sB[bAt + 4], b10 = sB[bAt + n8], b11 = sB[bAt + n8 + 4];
                    uint b20 = sB[bAt + (2 * n8)], b21 = sB[bAt + (2 * n8) + 4], b30 = sB[bAt + (3 * n8)], b31 = sB[bAt + (3 * n8) + 4];
                    c00 = Step<TH>(c00, a0, b00, b01);
                    c01 = Step<TH>(c01, a0, b10, b11);
                    c02 = Step<TH>(c02, a0, b20, b21);
                    c03 = Step<TH>(c03, a0, b30, b31);
                    c10 = Step<TH>(c10, a1, b00, b01);
                    c11 = Step<TH>(c11, a1, b10, b11);
                    c12 = Step<TH>(c12, a1, b20, b21);
                    c13 = Step<TH>(c13, a1, b30, b31);
                }

                Group.Barrier();
            }

            int rowLo = row0 + warpRow + group, column = col0 + warpCol + (2 * t);
            Store<TC, TCE>(c, s, c00, rowLo, column);
            Store<TC, TCE>(c, s, c01, rowLo, column + 8);
            Store<TC, TCE>(c, s, c02, rowLo, column + 16);
            Store<TC, TCE>(c, s, c03, rowLo, column + 24);
            Store<TC, TCE>(c, s, c10, rowLo + 16, column);
            Store<TC, TCE>(c, s, c11, rowLo + 16, column + 8);
            Store<TC, TCE>(c, s, c12, rowLo + 16, column + 16);
            Store<TC, TCE>(c, s, c13, rowLo + 16, column + 24);
        }
    }

    /// <summary>One lane's four C values of an m16n8 slice: (group, 2t), (group, 2t + 1), (group + 8, 2t), (group + 8, 2t + 1).</summary>
    internal struct Accumulator
    {
        public float C0, C1, C2, C3;
    }

    /// <summary>An m16k16 A fragment: rows group / group + 8, k pairs 2t / 2t + 8.</summary>
    internal readonly struct Fragment(uint r0, uint r1, uint r2, uint r3)
    {
        public readonly uint R0 = r0, R1 = r1, R2 = r2, R3 = r3;
    }

    private static Accumulator Step<TH>(Accumulator acc, Fragment a, uint b0, uint b1)
        where TH : struct, IMmaHalf =>
        CudaAsm.IsSupported ? Mma<TH>(acc, a, b0, b1) : Emulate<TH>(acc, a, b0, b1);

    private static Accumulator Mma<TH>(Accumulator acc, Fragment a, uint b0, uint b1)
        where TH : struct, IMmaHalf
    {
        Input<uint> ia0 = a.R0, ia1 = a.R1, ia2 = a.R2, ia3 = a.R3, ib0 = b0, ib1 = b1;
        Input<float> ic0 = acc.C0, ic1 = acc.C1, ic2 = acc.C2, ic3 = acc.C3;
        Output<float> d0 = default, d1 = default, d2 = default, d3 = default;
        if (default(TH).IsF16)
        {
            CudaAsm.EmitRef(F16Mma, ref d0, ref d1, ref d2, ref d3, ref ia0, ref ia1, ref ia2, ref ia3, ref ib0, ref ib1, ref ic0, ref ic1, ref ic2, ref ic3);
        }
        else
        {
            CudaAsm.EmitRef(Bf16Mma, ref d0, ref d1, ref d2, ref d3, ref ia0, ref ia1, ref ia2, ref ia3, ref ib0, ref ib1, ref ic0, ref ic1, ref ic2, ref ic3);
        }

        Accumulator result;
        result.C0 = d0.Value;
        result.C1 = d1.Value;
        result.C2 = d2.Value;
        result.C3 = d3.Value;
        return result;
    }

    // mma.sync m16n8k16 from the warp's fragments (PTX ISA layout): for k pair p, row `group` of A is in register
    // R0 (p < 4) or R2 of lane 4·group + p mod 4, row group + 8 in R1 / R3; column n of B is in b0 (p < 4) or b1 of
    // lane 4·n + p mod 4. Every lane gathers what its four outputs need with shuffles.
    private static Accumulator Emulate<TH>(Accumulator acc, Fragment a, uint b0, uint b1)
        where TH : struct, IMmaHalf
    {
        bool f16 = default(TH).IsF16;
        int lane = Warp.LaneIdx, group = lane >> 2, t = lane & 3;
        for (int p = 0; p < 8; p++)
        {
            int source = p & 3;
            uint rowLo = Warp.Shuffle(p < 4 ? a.R0 : a.R2, (4 * group) + source);
            uint rowHi = Warp.Shuffle(p < 4 ? a.R1 : a.R3, (4 * group) + source);
            uint column0 = Warp.Shuffle(p < 4 ? b0 : b1, (4 * (2 * t)) + source);
            uint column1 = Warp.Shuffle(p < 4 ? b0 : b1, (4 * ((2 * t) + 1)) + source);
            acc.C0 += Dot(rowLo, column0, f16);
            acc.C1 += Dot(rowLo, column1, f16);
            acc.C2 += Dot(rowHi, column0, f16);
            acc.C3 += Dot(rowHi, column1, f16);
        }

        return acc;
    }

    private static float Dot(uint x, uint y, bool f16) => (Half(x & 0xFFFF, f16) * Half(y & 0xFFFF, f16)) + (Half(x >> 16, f16) * Half(y >> 16, f16));

    private static float Half(uint bits, bool f16) => f16 ? default(F16Element).Load((ushort)bits) : default(Bf16Element).Load((ushort)bits);

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
