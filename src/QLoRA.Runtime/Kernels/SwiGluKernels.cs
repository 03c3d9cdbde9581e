using ILGPU;

namespace QLoRA.Runtime.Kernels;

/// <summary>SwiGLU gate of the Llama MLP, elementwise and grid-stride: y = silu(g) ⊙ u, silu(g) = g·σ(g).</summary>
internal static class SwiGluKernels
{
    public static void Forward<T, TE>(ArrayView<T> gate, ArrayView<T> up, ArrayView<T> y, long count)
        where T : unmanaged
        where TE : struct, IElement<T>
    {
        TE e = default;
        for (long i = Grid.GlobalIndex.X; i < count; i += (long)Grid.DimX * Group.DimX)
        {
            float g = e.Load(gate[i]);
            y[i] = e.Store(g / (1f + MathF.Exp(-g)) * e.Load(up[i]));
        }
    }

    /// <summary>dg = dy·u·σ(g)·(1 + g·(1 − σ(g))), du = dy·silu(g).</summary>
    public static void Backward<T, TE>(ArrayView<T> gate, ArrayView<T> up, ArrayView<T> dy, ArrayView<T> dGate, ArrayView<T> dUp, long count)
        where T : unmanaged
        where TE : struct, IElement<T>
    {
        TE e = default;
        for (long i = Grid.GlobalIndex.X; i < count; i += (long)Grid.DimX * Group.DimX)
        {
            float g = e.Load(gate[i]);
            float sigmoid = 1f / (1f + MathF.Exp(-g));
            float d = e.Load(dy[i]);
            float u = e.Load(up[i]); // read before dUp is written: dUp may alias up
            dUp[i] = e.Store(d * g * sigmoid);
            dGate[i] = e.Store(d * u * sigmoid * (1f + (g * (1f - sigmoid))));
        }
    }
}
