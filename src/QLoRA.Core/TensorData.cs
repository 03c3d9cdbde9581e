using System.Numerics.Tensors;
using System.Runtime.InteropServices;
using QLoRA.Core.Numerics;

namespace QLoRA.Core;

/// <summary>A small dense tensor held in memory: dtype, shape and little-endian bytes.</summary>
/// <param name="Dtype">Element type.</param>
/// <param name="Shape">Dimensions.</param>
/// <param name="Data">Raw bytes (length = elements × element size).</param>
public sealed record TensorData(DType Dtype, IReadOnlyList<long> Shape, byte[] Data)
{
    /// <summary>Number of elements.</summary>
    public long ElementCount => Shape.Aggregate(1L, (a, d) => a * d);

    /// <summary>Shape as text, e.g. <c>[16, 4096]</c>.</summary>
    public string ShapeText => $"[{string.Join(", ", Shape)}]";

    /// <summary>Wraps float32 values.</summary>
    public static TensorData FromSingle(ReadOnlySpan<float> values, params long[] shape) =>
        new(DType.F32, shape, MemoryMarshal.AsBytes(values).ToArray());

    /// <summary>Rounds float32 values to bf16.</summary>
    public static TensorData FromSingleAsBFloat16(ReadOnlySpan<float> values, params long[] shape)
    {
        var bf16 = new BFloat16[values.Length];
        BFloat16Conversions.FromSingle(values, bf16);
        return new(DType.BF16, shape, MemoryMarshal.AsBytes(bf16.AsSpan()).ToArray());
    }

    /// <summary>The values widened to float32 (F32, BF16 or F16 only).</summary>
    /// <exception cref="NotSupportedException">Not a float dtype.</exception>
    public float[] ToSingle()
    {
        var result = new float[ElementCount];
        switch (Dtype)
        {
            case DType.F32:
                MemoryMarshal.Cast<byte, float>(Data).CopyTo(result);
                break;
            case DType.BF16:
                BFloat16Conversions.ToSingle(MemoryMarshal.Cast<byte, BFloat16>(Data), result);
                break;
            case DType.F16:
                TensorPrimitives.ConvertToSingle(MemoryMarshal.Cast<byte, Half>(Data), result);
                break;
            default:
                throw new NotSupportedException($"{Dtype} tensors do not convert to float32.");
        }

        return result;
    }
}
