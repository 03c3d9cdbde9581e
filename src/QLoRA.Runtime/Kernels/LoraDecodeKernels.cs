using ILGPU;

namespace QLoRA.Runtime.Kernels;

/// <summary>The buffers and sizes of one <see cref="LoraDecodeKernels.AddNormShrink{T, TE}"/> launch.</summary>
internal readonly struct AddNormShrinkArgs<T>
    where T : unmanaged
{
    /// <summary>Residual stream in [rows, dim] and out (a different buffer: other groups still read the input).</summary>
    public readonly ArrayView<T> XIn, XOut;

    /// <summary>The previous projection's base output [rows, dim] (HasDelta 0: none) and its shrunk input [rows, maxRank].</summary>
    public readonly ArrayView<T> Delta;
    public readonly ArrayView<float> DeltaXa;
    public readonly int HasDelta, DeltaModule;

    /// <summary>Norm weight [dim], normed output [rows, dim], 1/rms [rows].</summary>
    public readonly ArrayView<float> Weight;
    public readonly ArrayView<T> Normed;
    public readonly ArrayView<float> InverseRms;

    /// <summary>Shrink of the normed rows for projections Module0 … Module0 + Count − 1: xa [rows, 3, maxRank].</summary>
    public readonly ArrayView<float> Xa;
    public readonly int Module0, Count;
    public readonly int Rows, Dim, Slices, MaxRank;
    public readonly float Eps;

    public AddNormShrinkArgs(ArrayView<T> xIn, ArrayView<T> xOut, ArrayView<T> delta, ArrayView<float> deltaXa, bool hasDelta, int deltaModule,
        ArrayView<float> weight, ArrayView<T> normed, ArrayView<float> inverseRms, ArrayView<float> xa, int module0, int count, int rows, int dim, int slices, int maxRank, float eps)
    {
        (XIn, XOut, Delta, DeltaXa, HasDelta, DeltaModule) = (xIn, xOut, delta, deltaXa, hasDelta ? 1 : 0, deltaModule);
        (Weight, Normed, InverseRms, Xa, Module0, Count) = (weight, normed, inverseRms, xa, module0, count);
        (Rows, Dim, Slices, MaxRank, Eps) = (rows, dim, slices, maxRank, eps);
    }
}

/// <summary>
/// The two kernels that let a decode step with LoRA adapters keep 8 launches per block. A LoRA delta s·(x·Aᵀ)·Bᵀ needs
/// a whole-row reduction (x·Aᵀ, the shrink) before its expand, so each shrink runs in the launch that completes its
/// input, and each expand in the launch that consumes its output:
/// <list type="bullet">
/// <item>q/k/v and gate/up: <see cref="AddNormShrink{T, TE}"/> adds the residual, norms the row and shrinks the normed
/// row by the next projections' A; their GEMVs add the expand in the epilogue (<see cref="LoraEpilogue"/>).</item>
/// <item>o and down: <see cref="GemvShrink{T, TE, TAbsmax}"/> computes the base GEMV and, in extra warps, the shrink of its
/// own input; the next <see cref="AddNormShrink{T, TE}"/> adds the expand to the base output as it adds the residual.</item>
/// </list>
/// Rows without an adapter get exactly the values of the fused path without adapters (the same sums in the same order),
/// so a row's result does not depend on what else is in the batch.
/// </summary>
internal static class LoraDecodeKernels
{
    /// <summary>Shared floats per group: the row (dim) and its 1/rms.</summary>
    public static int SharedFloats(int dim) => dim + 1;

    /// <summary>
    /// Group per (row, slice): x_out = x_in + (delta + s·xa·Bᵀ), normed = w ⊙ x_out / rms(x_out) — both written by slice 0,
    /// recomputed identically by the others — then the slice's share of the shrink dots xa[row, m, k] = normed · A_m[k].
    /// The square sum runs on warp 0 with the lane order of <see cref="RmsNormKernels.Row{T, TE}"/>: bit-equal norms.
    /// </summary>
    public static void AddNormShrink<T, TE>(AddNormShrinkArgs<T> a, LoraBank<T> bank)
        where T : unmanaged
        where TE : struct, IElement<T>
    {
        TE e = default;
        ArrayView<float> shared = SharedMemory.GetDynamic<float>();
        int ws = Warp.WarpSize, lane = Warp.LaneIdx, warp = Group.IdxX / ws, warps = Group.DimX / ws;
        for (int item = Grid.IdxX; item < a.Rows * a.Slices; item += Grid.DimX)
        {
            int row = item / a.Slices, slice = item - (row * a.Slices);
            long offset = (long)row * a.Dim;
            LoraRef<T> d = a.HasDelta != 0 && a.DeltaModule >= 0 ? bank.Of(row, a.DeltaModule) : default;
            for (int j = Group.IdxX; j < a.Dim; j += Group.DimX)
            {
                float v = e.Load(a.XIn[offset + j]);
                if (a.HasDelta != 0)
                {
                    float delta = e.Load(a.Delta[offset + j]);
                    if (d.Rank > 0)
                    {
                        float sum = 0f;
                        long xa = (long)row * a.MaxRank, bRow = d.B + ((long)j * d.Rank);
                        for (int k = 0; k < d.Rank; k++)
                        {
                            sum += a.DeltaXa[xa + k] * e.Load(d.Weights[bRow + k]);
                        }

                        delta = e.Load(e.Store(delta + (d.Scale * sum))); // the projection's output, rounded once as a GEMV stores it
                    }

                    v = e.Load(e.Store(v + delta));
                }

                shared[j] = v;
                if (slice == 0)
                {
                    a.XOut[offset + j] = e.Store(v);
                }
            }

            Group.Barrier();
            if (warp == 0)
            {
                float sum = 0f;
                for (int j = lane; j < a.Dim; j += ws)
                {
                    float v = shared[j];
                    sum += v * v;
                }

                float inv = 1f / MathF.Sqrt((WarpReduce.Sum(sum) / a.Dim) + a.Eps);
                if (lane == 0)
                {
                    shared[a.Dim] = inv;
                    if (slice == 0)
                    {
                        a.InverseRms[row] = inv;
                    }
                }
            }

            Group.Barrier();
            float inverse = shared[a.Dim];
            for (int j = Group.IdxX; j < a.Dim; j += Group.DimX)
            {
                T n = e.Store(a.Weight[j] * (shared[j] * inverse));
                shared[j] = e.Load(n);
                if (slice == 0)
                {
                    a.Normed[offset + j] = n;
                }
            }

            Group.Barrier();
            // This slice's dots, one per warp at a time: t = module · maxRank + k.
            for (int t = (slice * warps) + warp; t < a.Count * a.MaxRank; t += a.Slices * warps)
            {
                int m = t / a.MaxRank, k = t - (m * a.MaxRank);
                LoraRef<T> r = bank.Of(row, a.Module0 + m);
                if (k < r.Rank)
                {
                    long aRow = r.A + ((long)k * a.Dim);
                    float partial = 0f;
                    for (int j = lane; j < a.Dim; j += ws)
                    {
                        partial += shared[j] * e.Load(r.Weights[aRow + j]);
                    }

                    float dot = WarpReduce.Sum(partial);
                    if (lane == 0)
                    {
                        a.Xa[((((long)row * 3) + m) * a.MaxRank) + k] = dot;
                    }
                }
            }

            Group.Barrier(); // the next item overwrites the shared row
        }
    }

    /// <summary>
    /// y = x·Wᵀ (+ bias) (warps 0 … out − 1, as <see cref="Nf4GemvKernels.Gemv{T, TE, TAbsmax}"/> and the bias add) and, in warps out … out + batch·maxRank − 1,
    /// the shrink of each row by its adapter's A of projection <paramref name="module"/>: xa[b, k] = x[b] · A[k] (float32).
    /// </summary>
    public static void GemvShrink<T, TE, TAbsmax>(ArrayView<UInt4> x, ArrayView<T> xElements, ArrayView<float> table, GemvSegment<T, TAbsmax> w,
        LoraBank<T> bank, ArrayView<float> xa, int module, int maxRank, FusedShape f)
        where T : unmanaged
        where TE : struct, IElement<T>
        where TAbsmax : struct, IAbsmaxSource
    {
        TE e = default;
        table = CodeTable.ToShared(table);
        int lanes = Warp.WarpSize, lane = Warp.LaneIdx;
        int total = w.Out + (f.Batch * maxRank);
        for (int row = WarpRows.First, stride = WarpRows.Stride; row < total; row += stride)
        {
            if (row < w.Out)
            {
                var s = new GemvShape(f.Batch, w.Out, f.In, f.BlockShift);
                RowSums sums = Nf4GemvKernels.Row<T, TE, TAbsmax>(w.Packed, w.Absmax, table, x, s, row).WarpSum(f.Batch);
                if (lane == 0)
                {
                    for (int batchRow = 0; batchRow < f.Batch; batchRow++)
                    {
                        // Rounded as the plain path rounds: the GEMV's store, then the bias added to it (o_proj with
                        // attention_bias, down_proj with mlp_bias) — so a row without an adapter equals a step without any.
                        T v = e.Store(sums.Get(batchRow));
                        w.Y[((long)batchRow * w.Out) + row] = w.HasBias != 0 ? e.Store(e.Load(v) + w.Bias[row]) : v;
                    }
                }

                continue;
            }

            int t = row - w.Out, b = t / maxRank, k = t - (b * maxRank);
            LoraRef<T> r = bank.Of(b, module);
            if (k < r.Rank)
            {
                long aRow = r.A + ((long)k * f.In), xRow = (long)b * f.In;
                float partial = 0f;
                for (int j = lane; j < f.In; j += lanes)
                {
                    partial += e.Load(xElements[xRow + j]) * e.Load(r.Weights[aRow + j]);
                }

                float dot = WarpReduce.Sum(partial);
                if (lane == 0)
                {
                    xa[((long)b * maxRank) + k] = dot;
                }
            }
        }
    }
}
