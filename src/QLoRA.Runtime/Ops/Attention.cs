using ILGPU;
using ILGPU.Runtime;
using QLoRA.Core;
using QLoRA.Runtime.Kernels;
using QLoRA.Runtime.Tensors;
using Device = QLoRA.Runtime.Devices.Device;

namespace QLoRA.Runtime.Ops;

/// <summary>
/// Causal grouped-query attention over packed sequences described by cumulative boundaries
/// (<c>[0, len0, len0+len1, …, tokens]</c>, as flash-attention's cu_seqlens): no padding, no tokens×tokens matrix;
/// flash-style tiles of rows through shared memory (see <see cref="AttentionKernels"/>). Head dimension up to 256.
/// </summary>
public static class Attention
{
    /// <summary>o = softmax(scale·q kᵀ + causal mask within each sequence) v; writes the log-sum-exp per (token, head).</summary>
    /// <param name="q">[tokens, heads, d] of a compute dtype (F32, BF16, F16); q, k, v, o and the gradients share it.</param>
    /// <param name="k">[tokens, kvHeads, d]; heads must be a multiple of kvHeads.</param>
    /// <param name="v">[tokens, kvHeads, d].</param>
    /// <param name="sequenceBoundaries">Cumulative boundaries: starts at 0, non-decreasing, ends at tokens.</param>
    /// <param name="o">[tokens, heads, d], written.</param>
    /// <param name="lse">F32 [tokens, heads], written (kept for the backward).</param>
    /// <exception cref="ArgumentException">Shapes disagree or the boundaries are malformed.</exception>
    /// <param name="slidingWindow">Mistral's sliding_window: each token sees at most this many keys (itself included); 0 for none.</param>
    public static void Forward(DeviceTensor q, DeviceTensor k, DeviceTensor v, ReadOnlySpan<int> sequenceBoundaries, DeviceTensor o, DeviceTensor lse, int slidingWindow = 0)
    {
        AttentionShape s = Check(q, k, v, o, lse, slidingWindow);
        CheckBoundaries(sequenceBoundaries, s.Tokens);
        if (Cpu.CpuOps.Runs(q))
        {
            Cpu.CpuOps.AttentionForward(q, k, v, sequenceBoundaries, o, lse, slidingWindow);
            return;
        }

        using DeviceTensor starts = Boundaries(q.Device, sequenceBoundaries, s.Tokens, end: false);
        ComputeDispatch.Run(q, new ForwardLaunch(q, k, v, starts, o, lse, s), nameof(q));
    }

    /// <summary>Gradients dq, dk, dv from dO, recomputing probabilities from the saved log-sum-exp.</summary>
    /// <exception cref="ArgumentException">Shapes disagree or the boundaries are malformed.</exception>
    public static void Backward(DeviceTensor q, DeviceTensor k, DeviceTensor v, ReadOnlySpan<int> sequenceBoundaries, DeviceTensor o, DeviceTensor lse, DeviceTensor dO, DeviceTensor dQ, DeviceTensor dK, DeviceTensor dV, int slidingWindow = 0)
    {
        AttentionShape s = Check(q, k, v, o, lse, slidingWindow);
        Shapes.Require(dO, q.Dtype, q.Shape, nameof(dO));
        Shapes.Require(dQ, q.Dtype, q.Shape, nameof(dQ));
        Shapes.Require(dK, q.Dtype, k.Shape, nameof(dK));
        Shapes.Require(dV, q.Dtype, v.Shape, nameof(dV));
        Device device = q.Device;
        CheckBoundaries(sequenceBoundaries, s.Tokens);
        using DeviceTensor delta = DeviceTensor.Allocate(device, DType.F32, s.Tokens, s.Heads);
        if (Cpu.CpuOps.Runs(q))
        {
            Cpu.CpuOps.AttentionBackward(q, k, v, sequenceBoundaries, o, lse, dO, dQ, dK, dV, delta, slidingWindow);
            return;
        }

        using DeviceTensor starts = Boundaries(device, sequenceBoundaries, s.Tokens, end: false);
        using DeviceTensor ends = Boundaries(device, sequenceBoundaries, s.Tokens, end: true);

        ComputeDispatch.Run(q, new BackwardLaunch(q, k, v, starts, ends, o, lse, dO, delta, dQ, dK, dV, s), nameof(q));
    }

    private readonly record struct ForwardLaunch(DeviceTensor Q, DeviceTensor K, DeviceTensor V, DeviceTensor Starts, DeviceTensor O, DeviceTensor Lse, AttentionShape Shape) : IComputeLaunch
    {
        public void Run<T, TE>()
            where T : unmanaged
            where TE : struct, IElement<T>
        {
            Device device = Q.Device;
            var kernel = device.Kernel(static a => a.LoadKernel<ArrayView<T>, ArrayView<T>, ArrayView<T>, ArrayView<int>, ArrayView<T>, ArrayView<float>, AttentionShape>(AttentionKernels.Forward<T, TE>));
            int tile = Tile(device, Shape.HeadDim);
            KernelConfig config = device.Tiled(Blocks(tile, Shape.Tokens) * Shape.Heads, tile, AttentionKernels.KeyValueTileFloats(tile, Shape.HeadDim));
            kernel(device.Stream, config, Q.View<T>(), K.View<T>(), V.View<T>(), Starts.View<int>(), O.View<T>(), Lse.View<float>(), Shape);
        }
    }

    private readonly record struct BackwardLaunch(DeviceTensor Q, DeviceTensor K, DeviceTensor V, DeviceTensor Starts, DeviceTensor Ends, DeviceTensor O, DeviceTensor Lse, DeviceTensor DO, DeviceTensor Delta, DeviceTensor DQ, DeviceTensor DK, DeviceTensor DV, AttentionShape Shape) : IComputeLaunch
    {
        public void Run<T, TE>()
            where T : unmanaged
            where TE : struct, IElement<T>
        {
            Device device = Q.Device;
            var query = device.Kernel(static a => a.LoadKernel<ArrayView<T>, ArrayView<T>, ArrayView<T>, ArrayView<int>, ArrayView<T>, ArrayView<float>, ArrayView<T>, ArrayView<float>, ArrayView<T>, AttentionShape>(AttentionKernels.BackwardQuery<T, TE>));
            int tile = Tile(device, Shape.HeadDim);
            KernelConfig queryConfig = device.Tiled(Blocks(tile, Shape.Tokens) * Shape.Heads, tile, AttentionKernels.KeyValueTileFloats(tile, Shape.HeadDim));
            query(device.Stream, queryConfig, Q.View<T>(), K.View<T>(), V.View<T>(), Starts.View<int>(), O.View<T>(), Lse.View<float>(), DO.View<T>(), Delta.View<float>(), DQ.View<T>(), Shape);
            var keyValue = device.Kernel(static a => a.LoadKernel<ArrayView<T>, ArrayView<T>, ArrayView<T>, ArrayView<int>, ArrayView<float>, ArrayView<T>, ArrayView<float>, ArrayView<T>, ArrayView<T>, AttentionShape>(AttentionKernels.BackwardKeyValue<T, TE>));
            KernelConfig keyValueConfig = device.Tiled(Blocks(tile, Shape.Tokens) * Shape.KvHeads, tile, AttentionKernels.QueryTileFloats(tile, Shape.HeadDim));
            keyValue(device.Stream, keyValueConfig, Q.View<T>(), K.View<T>(), V.View<T>(), Ends.View<int>(), Lse.View<float>(), DO.View<T>(), Delta.View<float>(), DK.View<T>(), DV.View<T>(), Shape);
        }
    }

    private static long Blocks(int tile, int tokens) => (tokens + tile - 1) / tile;

    // One tile size for all three kernels, from the largest shared-memory need per row (the dK/dV kernel's).
    internal static int Tile(Device device, int headDim) => device.TileSize(AttentionKernels.QueryTileFloats(1, headDim));

    private static AttentionShape Check(DeviceTensor q, DeviceTensor k, DeviceTensor v, DeviceTensor o, DeviceTensor lse, int slidingWindow)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(slidingWindow);
        if (q.Shape.Count != 3 || k.Shape.Count != 3)
        {
            throw new ArgumentException($"q must be [tokens, heads, d] and k [tokens, kvHeads, d]; got [{string.Join(", ", q.Shape)}] and [{string.Join(", ", k.Shape)}].", nameof(q));
        }

        int tokens = checked((int)q.Shape[0]), heads = checked((int)q.Shape[1]), d = checked((int)q.Shape[2]), kvHeads = checked((int)k.Shape[1]);
        if (d > AttentionKernels.MaxHeadDim || q.Device.MaxTileSize > AttentionKernels.MaxTile)
        {
            throw new ArgumentException($"Head dimension {d} is above the {AttentionKernels.MaxHeadDim} the attention kernels hold per thread.", nameof(q));
        }

        if (kvHeads == 0 || heads % kvHeads != 0)
        {
            throw new ArgumentException($"{heads} query heads are not a multiple of {kvHeads} key/value heads.", nameof(k));
        }

        Shapes.Require(k, q.Dtype, [tokens, kvHeads, d], nameof(k));
        Shapes.Require(v, q.Dtype, [tokens, kvHeads, d], nameof(v));
        Shapes.Require(o, q.Dtype, q.Shape, nameof(o));
        Shapes.Require(lse, DType.F32, [tokens, heads], nameof(lse));
        return new AttentionShape(tokens, heads, kvHeads, d, 1f / MathF.Sqrt(d), slidingWindow);
    }

    // Cumulative boundaries: from 0 to the token count, never decreasing.
    private static void CheckBoundaries(ReadOnlySpan<int> boundaries, int tokens)
    {
        if (boundaries.Length < 2 || boundaries[0] != 0 || boundaries[^1] != tokens)
        {
            throw new ArgumentException($"Sequence boundaries must run from 0 to {tokens} (the token count).", nameof(boundaries));
        }

        for (int sequence = 0; sequence + 1 < boundaries.Length; sequence++)
        {
            if (boundaries[sequence + 1] < boundaries[sequence])
            {
                throw new ArgumentException($"Sequence boundaries must not decrease ({boundaries[sequence]} then {boundaries[sequence + 1]}).", nameof(boundaries));
            }
        }
    }

    // Per token: the start (or end) of its sequence, from cumulative boundaries (already checked).
    private static DeviceTensor Boundaries(Device device, ReadOnlySpan<int> boundaries, int tokens, bool end)
    {
        var perToken = new int[tokens];
        for (int sequence = 0; sequence + 1 < boundaries.Length; sequence++)
        {
            int first = boundaries[sequence], last = boundaries[sequence + 1];
            for (int t = first; t < last; t++)
            {
                perToken[t] = end ? last : first;
            }
        }

        return DeviceTensor.FromHost<int>(device, perToken, DType.I32, tokens);
    }
}
