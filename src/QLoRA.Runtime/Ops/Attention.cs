using ILGPU;
using ILGPU.Runtime;
using QLoRA.Core;
using QLoRA.Runtime.Kernels;
using QLoRA.Runtime.Tensors;
using Device = QLoRA.Runtime.Devices.Device;

namespace QLoRA.Runtime.Ops;

/// <summary>
/// Causal grouped-query attention over packed sequences described by cumulative boundaries
/// (<c>[0, len0, len0+len1, …, tokens]</c>, as flash-attention's cu_seqlens): no padding, no tokens×tokens matrix.
/// </summary>
public static class Attention
{
    /// <summary>o = softmax(scale·q kᵀ + causal mask within each sequence) v; writes the log-sum-exp per (token, head).</summary>
    /// <param name="q">F32 [tokens, heads, d].</param>
    /// <param name="k">F32 [tokens, kvHeads, d]; heads must be a multiple of kvHeads.</param>
    /// <param name="v">F32 [tokens, kvHeads, d].</param>
    /// <param name="sequenceBoundaries">Cumulative boundaries: starts at 0, non-decreasing, ends at tokens.</param>
    /// <param name="o">F32 [tokens, heads, d], written.</param>
    /// <param name="lse">F32 [tokens, heads], written (kept for the backward).</param>
    /// <exception cref="ArgumentException">Shapes disagree or the boundaries are malformed.</exception>
    /// <param name="slidingWindow">Mistral's sliding_window: each token sees at most this many keys (itself included); 0 for none.</param>
    public static void Forward(DeviceTensor q, DeviceTensor k, DeviceTensor v, ReadOnlySpan<int> sequenceBoundaries, DeviceTensor o, DeviceTensor lse, int slidingWindow = 0)
    {
        AttentionShape s = Check(q, k, v, o, lse, slidingWindow);
        Device device = q.Device;
        using DeviceTensor starts = Boundaries(device, sequenceBoundaries, s.Tokens, end: false);
        var kernel = device.Kernel("attention.forward", a => a.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<float>, ArrayView<float>, AttentionShape>(AttentionKernels.Forward));
        kernel(device.GridStride, q.View<float>(), k.View<float>(), v.View<float>(), starts.View<int>(), o.View<float>(), lse.View<float>(), s);
    }

    /// <summary>Gradients dq, dk, dv from dO, recomputing probabilities from the saved log-sum-exp.</summary>
    /// <exception cref="ArgumentException">Shapes disagree or the boundaries are malformed.</exception>
    public static void Backward(DeviceTensor q, DeviceTensor k, DeviceTensor v, ReadOnlySpan<int> sequenceBoundaries, DeviceTensor o, DeviceTensor lse, DeviceTensor dO, DeviceTensor dQ, DeviceTensor dK, DeviceTensor dV, int slidingWindow = 0)
    {
        AttentionShape s = Check(q, k, v, o, lse, slidingWindow);
        Shapes.Require(dO, DType.F32, q.Shape, nameof(dO));
        Shapes.Require(dQ, DType.F32, q.Shape, nameof(dQ));
        Shapes.Require(dK, DType.F32, k.Shape, nameof(dK));
        Shapes.Require(dV, DType.F32, v.Shape, nameof(dV));
        Device device = q.Device;
        using DeviceTensor starts = Boundaries(device, sequenceBoundaries, s.Tokens, end: false);
        using DeviceTensor ends = Boundaries(device, sequenceBoundaries, s.Tokens, end: true);
        using DeviceTensor delta = DeviceTensor.Allocate(device, DType.F32, s.Tokens, s.Heads);
        var query = device.Kernel("attention.backward.q", a => a.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, AttentionShape>(AttentionKernels.BackwardQuery));
        query(device.GridStride, q.View<float>(), k.View<float>(), v.View<float>(), starts.View<int>(), o.View<float>(), lse.View<float>(), dO.View<float>(), delta.View<float>(), dQ.View<float>(), s);
        var keyValue = device.Kernel("attention.backward.kv", a => a.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<int>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, AttentionShape>(AttentionKernels.BackwardKeyValue));
        keyValue(device.GridStride, q.View<float>(), k.View<float>(), v.View<float>(), ends.View<int>(), lse.View<float>(), dO.View<float>(), delta.View<float>(), dK.View<float>(), dV.View<float>(), s);
    }

    private static AttentionShape Check(DeviceTensor q, DeviceTensor k, DeviceTensor v, DeviceTensor o, DeviceTensor lse, int slidingWindow)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(slidingWindow);
        if (q.Shape.Count != 3 || k.Shape.Count != 3)
        {
            throw new ArgumentException($"q must be [tokens, heads, d] and k [tokens, kvHeads, d]; got [{string.Join(", ", q.Shape)}] and [{string.Join(", ", k.Shape)}].", nameof(q));
        }

        int tokens = checked((int)q.Shape[0]), heads = checked((int)q.Shape[1]), d = checked((int)q.Shape[2]), kvHeads = checked((int)k.Shape[1]);
        if (kvHeads == 0 || heads % kvHeads != 0)
        {
            throw new ArgumentException($"{heads} query heads are not a multiple of {kvHeads} key/value heads.", nameof(k));
        }

        Shapes.Require(q, DType.F32, q.Shape, nameof(q));
        Shapes.Require(k, DType.F32, [tokens, kvHeads, d], nameof(k));
        Shapes.Require(v, DType.F32, [tokens, kvHeads, d], nameof(v));
        Shapes.Require(o, DType.F32, q.Shape, nameof(o));
        Shapes.Require(lse, DType.F32, [tokens, heads], nameof(lse));
        return new AttentionShape(tokens, heads, kvHeads, d, 1f / MathF.Sqrt(d), slidingWindow);
    }

    // Per token: the start (or end) of its sequence, from cumulative boundaries.
    private static DeviceTensor Boundaries(Device device, ReadOnlySpan<int> boundaries, int tokens, bool end)
    {
        if (boundaries.Length < 2 || boundaries[0] != 0 || boundaries[^1] != tokens)
        {
            throw new ArgumentException($"Sequence boundaries must run from 0 to {tokens} (the token count).", nameof(boundaries));
        }

        var perToken = new int[tokens];
        for (int sequence = 0; sequence + 1 < boundaries.Length; sequence++)
        {
            int first = boundaries[sequence], last = boundaries[sequence + 1];
            if (last < first)
            {
                throw new ArgumentException($"Sequence boundaries must not decrease ({first} then {last}).", nameof(boundaries));
            }

            for (int t = first; t < last; t++)
            {
                perToken[t] = end ? last : first;
            }
        }

        return DeviceTensor.FromHost<int>(device, perToken, DType.I32, tokens);
    }
}
