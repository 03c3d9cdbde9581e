using ILGPU;

namespace QLoRA.Runtime.Kernels;

/// <summary>
/// Inverted dropout with a counter-based mask: element i is kept when a 32-bit hash of (seed, i) is at least
/// <c>threshold</c> = p·2³², and kept values are scaled by 1/(1 − p). The mask is a pure function of the seed and the
/// index, so the backward regenerates it instead of storing it, and runs are bit-reproducible.
/// </summary>
internal static class DropoutKernels
{
    public static void Apply<T, TE>(ArrayView<T> x, ArrayView<T> y, long count, uint threshold, float scale, uint seed)
        where T : unmanaged
        where TE : struct, IElement<T>
    {
        TE e = default;
        for (long i = Grid.GlobalIndex.X; i < count; i += (long)Grid.DimX * Group.DimX)
        {
            y[i] = Hash(seed, i) >= threshold ? e.Store(e.Load(x[i]) * scale) : e.Store(0f);
        }
    }

    /// <summary>A well-mixed 32-bit hash of (seed, index): two rounds of a multiply-xorshift finalizer.</summary>
    internal static uint Hash(uint seed, long index)
    {
        uint h = (uint)index ^ ((uint)(index >> 32) * 0x9E3779B9u) ^ (seed * 0x85EBCA6Bu);
        h ^= h >> 16;
        h *= 0x7FEB352Du;
        h ^= h >> 15;
        h *= 0x846CA68Bu;
        h ^= h >> 16;
        h += seed;
        h ^= h >> 16;
        h *= 0x7FEB352Du;
        h ^= h >> 15;
        h *= 0x846CA68Bu;
        h ^= h >> 16;
        return h;
    }
}
