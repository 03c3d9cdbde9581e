using ILGPU;

namespace QLoRA.Runtime.Kernels;

/// <summary>
/// Rotary embedding in transformers' rotate-half layout: element i pairs with i + d/2 of the same head; the angle is
/// position × inv_freq[i] in float32. Grid-stride over (token, head, i). The backward is the inverse rotation.
/// </summary>
internal static class RopeKernels
{
    /// <summary>x: [tokens, heads, headDim] in place; positions: [tokens]; direction +1 forward, −1 backward.</summary>
    public static void Rotate<T, TE>(ArrayView<T> x, ArrayView<int> positions, ArrayView<float> invFreq, int tokens, int heads, int headDim, float direction)
        where T : unmanaged
        where TE : struct, IElement<T>
    {
        TE e = default;
        int half = headDim / 2;
        long pairs = (long)tokens * heads * half;
        for (long p = Grid.GlobalIndex.X; p < pairs; p += (long)Grid.DimX * Group.DimX)
        {
            int i = (int)(p % half);
            long row = p / half; // token * heads + head
            int token = (int)(row / heads);
            float angle = positions[token] * invFreq[i];
            float c = MathF.Cos(angle);
            float s = MathF.Sin(angle) * direction;
            long first = (row * headDim) + i;
            float a = e.Load(x[first]);
            float b = e.Load(x[first + half]);
            x[first] = e.Store((a * c) - (b * s));
            x[first + half] = e.Store((b * c) + (a * s));
        }
    }
}
