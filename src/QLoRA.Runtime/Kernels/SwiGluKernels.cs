using ILGPU;

namespace QLoRA.Runtime.Kernels;

/// <summary>SwiGLU gate of the Llama MLP, elementwise and grid-stride: y = silu(g) ⊙ u, silu(g) = g·σ(g).</summary>
internal static class SwiGluKernels
{
    public static void Forward(ArrayView<float> gate, ArrayView<float> up, ArrayView<float> y, long count)
    {
        for (long i = Grid.GlobalIndex.X; i < count; i += (long)Grid.DimX * Group.DimX)
        {
            float g = gate[i];
            y[i] = g / (1f + MathF.Exp(-g)) * up[i];
        }
    }

    /// <summary>dg = dy·u·σ(g)·(1 + g·(1 − σ(g))), du = dy·silu(g).</summary>
    public static void Backward(ArrayView<float> gate, ArrayView<float> up, ArrayView<float> dy, ArrayView<float> dGate, ArrayView<float> dUp, long count)
    {
        for (long i = Grid.GlobalIndex.X; i < count; i += (long)Grid.DimX * Group.DimX)
        {
            float g = gate[i];
            float sigmoid = 1f / (1f + MathF.Exp(-g));
            float d = dy[i];
            dUp[i] = d * g * sigmoid;
            dGate[i] = d * up[i] * sigmoid * (1f + (g * (1f - sigmoid)));
        }
    }
}
