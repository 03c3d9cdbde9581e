using QLoRA.Runtime.Ops;
using QLoRA.Runtime.Tensors;

namespace QLoRA.Runtime.Engine;

/// <summary>
/// One Llama-family decoder block, forward and backward, written out op by op:
/// mid = x + o(attn(rope(q(n₁)), rope(k(n₁)), v(n₁))) with n₁ = norm₁(x); y = mid + down(silu(gate(n₂)) ⊙ up(n₂)) with
/// n₂ = norm₂(mid). The forward saves what the backward reads into <see cref="BlockActivations"/>; the backward turns
/// dL/dy (in <see cref="BlockScratch.DResidual"/>) into dL/dx in place and accumulates the adapters' gradients.
/// </summary>
internal static class DecoderBlock
{
    /// <summary>y = block(x), saving the block's activations into <paramref name="a"/>.</summary>
    public static void Forward(DecoderBlockWeights w, EngineShape s, BatchContext b, BlockActivations a, BlockScratch scratch, DeviceTensor x, DeviceTensor y)
    {
        int t = b.Tokens;
        DeviceTensor normed = R(a.Normed, t), q = R(a.Q, t), k = R(a.K, t), v = R(a.V, t), attention = R(a.Attention, t);
        DeviceTensor mid = R(a.Mid, t), normed2 = R(a.Normed2, t), gate = R(a.Gate, t), up = R(a.Up, t), act = R(a.Act, t);
        DeviceTensor projected = R(scratch.Projected, t);

        w.InputNorm.Forward(x, normed, R(a.InverseRms, t));
        w.Q.Forward(normed, q, b.Training);
        w.K.Forward(normed, k, b.Training);
        w.V.Forward(normed, v, b.Training);
        (DeviceTensor q3, DeviceTensor k3, DeviceTensor v3) = Heads(s, q, k, v);
        Rope.Forward(q3, b.Positions, b.InverseFrequencies);
        Rope.Forward(k3, b.Positions, b.InverseFrequencies);
        Attention.Forward(q3, k3, v3, b.Boundaries, attention.Reshape(t, s.Heads, s.HeadDim), R(a.Lse, t), b.SlidingWindow);
        w.O.Forward(attention, projected, b.Training);
        Elementwise.Add(x, projected, mid);

        w.PostNorm.Forward(mid, normed2, R(a.InverseRms2, t));
        w.Gate.Forward(normed2, gate, b.Training);
        w.Up.Forward(normed2, up, b.Training);
        SwiGlu.Forward(gate, up, act);
        w.Down.Forward(act, projected, b.Training);
        Elementwise.Add(mid, projected, y);
    }

    /// <summary>
    /// dL/dx from dL/dy: reads dL/dy from <see cref="BlockScratch.DResidual"/> and leaves dL/dx there; LoRA gradients
    /// accumulate into the adapters' gradient buffers, and the norms' weight gradients into <paramref name="inputNormGradient"/>
    /// and <paramref name="postNormGradient"/> when those norms are trained (null: frozen). <paramref name="x"/> is the
    /// block's input of the forward.
    /// </summary>
    public static void Backward(DecoderBlockWeights w, EngineShape s, BatchContext b, BlockActivations a, BlockScratch g, DeviceTensor x,
        DeviceTensor? inputNormGradient = null, DeviceTensor? postNormGradient = null)
    {
        int t = b.Tokens;
        DeviceTensor dResidual = R(g.DResidual, t), dh = R(g.DHidden, t), dhPart = R(g.DHiddenPart, t), dxPart = R(g.DResidualPart, t);

        // MLP: y = mid + down(act); dL/dmid gets dy directly and through norm₂.
        DeviceTensor dAct = R(g.DAct, t), dGate = R(g.DGate, t), dUp = R(g.DUp, t), normed2 = R(a.Normed2, t);
        w.Down.Backward(R(a.Act, t), dResidual, dAct, b.Training);
        SwiGlu.Backward(R(a.Gate, t), R(a.Up, t), dAct, dGate, dUp);
        w.Gate.Backward(normed2, dGate, dh, b.Training);
        w.Up.Backward(normed2, dUp, dhPart, b.Training);
        Elementwise.Add(dh, dhPart, dh);
        w.PostNorm.Backward(R(a.Mid, t), dh, R(a.InverseRms2, t), dxPart, postNormGradient);
        Elementwise.Add(dResidual, dxPart, dResidual);

        // Attention: mid = x + o(attn); dL/dx gets dmid directly and through norm₁.
        DeviceTensor dAttention = R(g.DAttention, t), normed = R(a.Normed, t);
        w.O.Backward(R(a.Attention, t), dResidual, dAttention, b.Training);
        (DeviceTensor q3, DeviceTensor k3, DeviceTensor v3) = Heads(s, R(a.Q, t), R(a.K, t), R(a.V, t));
        (DeviceTensor dq3, DeviceTensor dk3, DeviceTensor dv3) = Heads(s, R(g.DQ, t), R(g.DK, t), R(g.DV, t));
        Attention.Backward(q3, k3, v3, b.Boundaries, R(a.Attention, t).Reshape(t, s.Heads, s.HeadDim), R(a.Lse, t),
            dAttention.Reshape(t, s.Heads, s.HeadDim), dq3, dk3, dv3, b.SlidingWindow);
        Rope.Backward(dq3, b.Positions, b.InverseFrequencies);
        Rope.Backward(dk3, b.Positions, b.InverseFrequencies);
        w.Q.Backward(normed, R(g.DQ, t), dh, b.Training);
        w.K.Backward(normed, R(g.DK, t), dhPart, b.Training);
        Elementwise.Add(dh, dhPart, dh);
        w.V.Backward(normed, R(g.DV, t), dhPart, b.Training);
        Elementwise.Add(dh, dhPart, dh);
        w.InputNorm.Backward(x, dh, R(a.InverseRms, t), dxPart, inputNormGradient);
        Elementwise.Add(dResidual, dxPart, dResidual);
    }

    // The leading rows of a budget-sized slot: the micro-batch's tokens.
    private static DeviceTensor R(ActivationArena.Slot slot, int tokens) => slot.Tensor.Rows(0, tokens);

    private static (DeviceTensor Q, DeviceTensor K, DeviceTensor V) Heads(EngineShape s, DeviceTensor q, DeviceTensor k, DeviceTensor v)
    {
        long t = q.Shape[0];
        return (q.Reshape(t, s.Heads, s.HeadDim), k.Reshape(t, s.KeyValueHeads, s.HeadDim), v.Reshape(t, s.KeyValueHeads, s.HeadDim));
    }
}
