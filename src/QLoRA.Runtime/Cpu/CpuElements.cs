using System.Numerics.Tensors;
using QLoRA.Runtime.Kernels;

namespace QLoRA.Runtime.Cpu;

/// <summary>Rows of a compute-dtype buffer in host memory, to and from float32 (the kernels' own conversions).</summary>
internal static unsafe class CpuElements
{
    /// <summary>Reads <paramref name="count"/> elements from <paramref name="data"/> + <paramref name="index"/> as float32 (exact).</summary>
    public static void Load(void* data, CpuElement element, long index, int count, Span<float> destination)
    {
        switch (element)
        {
            case CpuElement.F32:
                new ReadOnlySpan<float>((float*)data + index, count).CopyTo(destination);
                break;
            case CpuElement.BF16:
                ushort* bf16 = (ushort*)data + index;
                for (int i = 0; i < count; i++)
                {
                    destination[i] = BitConverter.Int32BitsToSingle(bf16[i] << 16);
                }

                break;
            default:
                TensorPrimitives.ConvertToSingle(new ReadOnlySpan<Half>((Half*)data + index, count), destination[..count]);
                break;
        }
    }

    /// <summary>Writes float32 values rounded once to the element type (nearest even, as the kernels round).</summary>
    public static void Store(ReadOnlySpan<float> values, void* data, CpuElement element, long index)
    {
        switch (element)
        {
            case CpuElement.F32:
                values.CopyTo(new Span<float>((float*)data + index, values.Length));
                break;
            case CpuElement.BF16:
                StoreNarrow<Bf16Element>(values, (ushort*)data + index);
                break;
            default:
                StoreNarrow<F16Element>(values, (ushort*)data + index);
                break;
        }
    }

    private static void StoreNarrow<TE>(ReadOnlySpan<float> values, ushort* destination)
        where TE : struct, IElement<ushort>
    {
        TE e = default;
        for (int i = 0; i < values.Length; i++)
        {
            destination[i] = e.Store(values[i]);
        }
    }
}
