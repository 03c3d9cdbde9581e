using ILGPU;

namespace QLoRA.Runtime.Kernels;

/// <summary>
/// Butterfly reductions across a warp: every lane ends with the same, bit-identical result (each level adds x + y on
/// one lane and y + x on its partner, which are equal), in an order fixed by the warp size — deterministic.
/// </summary>
internal static class WarpReduce
{
    public static float Sum(float value)
    {
        for (int offset = Warp.WarpSize / 2; offset > 0; offset /= 2)
        {
            value += Warp.ShuffleXor(value, offset);
        }

        return value;
    }

    public static float Max(float value)
    {
        for (int offset = Warp.WarpSize / 2; offset > 0; offset /= 2)
        {
            float other = Warp.ShuffleXor(value, offset);
            value = other > value ? other : value;
        }

        return value;
    }
}
