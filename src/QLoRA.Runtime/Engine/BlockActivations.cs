using QLoRA.Core;
using Slot = QLoRA.Runtime.Engine.ActivationArena.Slot;

namespace QLoRA.Runtime.Engine;

/// <summary>
/// What one decoder block's backward needs from its forward, for a budget of <see cref="EngineShape.Tokens"/> tokens
/// (a smaller micro-batch uses the leading rows). Without gradient checkpointing every block has its own set; with it,
/// one set is shared and each block's forward is re-run into it inside the backward.
/// </summary>
internal sealed class BlockActivations
{
    public BlockActivations(ActivationArena.Layout layout, EngineShape s)
    {
        DType c = s.ComputeDtype;
        Normed = layout.Add(c, s.Tokens, s.Hidden);
        InverseRms = layout.Add(DType.F32, s.Tokens);
        Q = layout.Add(c, s.Tokens, s.QueryDim);
        K = layout.Add(c, s.Tokens, s.KeyValueDim);
        V = layout.Add(c, s.Tokens, s.KeyValueDim);
        Attention = layout.Add(c, s.Tokens, s.QueryDim);
        Lse = layout.Add(DType.F32, s.Tokens, s.Heads);
        Mid = layout.Add(c, s.Tokens, s.Hidden);
        Normed2 = layout.Add(c, s.Tokens, s.Hidden);
        InverseRms2 = layout.Add(DType.F32, s.Tokens);
        Gate = layout.Add(c, s.Tokens, s.Intermediate);
        Up = layout.Add(c, s.Tokens, s.Intermediate);
        Act = layout.Add(c, s.Tokens, s.Intermediate);
    }

    /// <summary>RMSNorm(x) before attention, and its inverse RMS per token.</summary>
    public Slot Normed { get; }

    public Slot InverseRms { get; }

    /// <summary>Queries, keys (both after RoPE) and values.</summary>
    public Slot Q { get; }

    public Slot K { get; }

    public Slot V { get; }

    /// <summary>Attention output (before o_proj) and its log-sum-exp per (token, head).</summary>
    public Slot Attention { get; }

    public Slot Lse { get; }

    /// <summary>The residual stream after attention.</summary>
    public Slot Mid { get; }

    /// <summary>RMSNorm(mid) before the MLP, and its inverse RMS.</summary>
    public Slot Normed2 { get; }

    public Slot InverseRms2 { get; }

    /// <summary>MLP gate and up projections, and SwiGLU(gate, up).</summary>
    public Slot Gate { get; }

    public Slot Up { get; }

    public Slot Act { get; }
}

/// <summary>Buffers one block's backward works in, shared by all blocks (the backward runs one block at a time).</summary>
internal sealed class BlockScratch
{
    public BlockScratch(ActivationArena.Layout layout, EngineShape s)
    {
        DType c = s.ComputeDtype;
        Projected = layout.Add(c, s.Tokens, s.Hidden);
        DResidual = layout.Add(c, s.Tokens, s.Hidden);
        DHidden = layout.Add(c, s.Tokens, s.Hidden);
        DHiddenPart = layout.Add(c, s.Tokens, s.Hidden);
        DResidualPart = layout.Add(c, s.Tokens, s.Hidden);
        DAct = layout.Add(c, s.Tokens, s.Intermediate);
        DGate = layout.Add(c, s.Tokens, s.Intermediate);
        DUp = layout.Add(c, s.Tokens, s.Intermediate);
        DAttention = layout.Add(c, s.Tokens, s.QueryDim);
        DQ = layout.Add(c, s.Tokens, s.QueryDim);
        DK = layout.Add(c, s.Tokens, s.KeyValueDim);
        DV = layout.Add(c, s.Tokens, s.KeyValueDim);
    }

    /// <summary>o_proj's and down_proj's output before the residual add (forward).</summary>
    public Slot Projected { get; }

    /// <summary>dL/d(residual stream), carried down through the blocks.</summary>
    public Slot DResidual { get; }

    public Slot DHidden { get; }

    public Slot DHiddenPart { get; }

    public Slot DResidualPart { get; }

    public Slot DAct { get; }

    public Slot DGate { get; }

    public Slot DUp { get; }

    public Slot DAttention { get; }

    public Slot DQ { get; }

    public Slot DK { get; }

    public Slot DV { get; }
}
