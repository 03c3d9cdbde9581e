using System.Runtime.InteropServices;
using QLoRA.Core.Numerics;

namespace QLoRA.Core.Quantization;

/// <summary>A 4-bit tensor: packed codes (two per byte, first value in the high nibble) and its <see cref="QuantState"/>.</summary>
public sealed class QuantizedTensor
{
    /// <summary>Pairs codes with their state.</summary>
    /// <exception cref="ArgumentException">The packed length is not ceil(n / 2).</exception>
    public QuantizedTensor(ReadOnlyMemory<byte> packed, QuantState state)
    {
        ArgumentNullException.ThrowIfNull(state);
        if (packed.Length != state.PackedBytes)
        {
            throw new ArgumentException($"{state.ElementCount} values pack into {state.PackedBytes} bytes, not {packed.Length}.", nameof(packed));
        }

        Packed = packed;
        State = state;
    }

    /// <summary>The packed codes.</summary>
    public ReadOnlyMemory<byte> Packed { get; }

    /// <summary>Decoding parameters.</summary>
    public QuantState State { get; }

    /// <summary>Quantizes float32 values of the given shape.</summary>
    /// <exception cref="NonFiniteValueException">The data holds NaN or ±Infinity.</exception>
    public static QuantizedTensor Quantize(ReadOnlySpan<float> data, IReadOnlyList<long> shape, QuantizationOptions? options = null, string? name = null) =>
        Quantize(MemoryMarshal.AsBytes(data), DType.F32, shape, options, name);

    /// <summary>Quantizes bf16 values of the given shape.</summary>
    /// <exception cref="NonFiniteValueException">The data holds NaN or ±Infinity.</exception>
    public static QuantizedTensor Quantize(ReadOnlySpan<BFloat16> data, IReadOnlyList<long> shape, QuantizationOptions? options = null, string? name = null) =>
        Quantize(MemoryMarshal.AsBytes(data), DType.BF16, shape, options, name);

    /// <summary>Quantizes float16 values of the given shape.</summary>
    /// <exception cref="NonFiniteValueException">The data holds NaN or ±Infinity.</exception>
    public static QuantizedTensor Quantize(ReadOnlySpan<Half> data, IReadOnlyList<long> shape, QuantizationOptions? options = null, string? name = null) =>
        Quantize(MemoryMarshal.AsBytes(data), DType.F16, shape, options, name);

    /// <summary>Quantizes the raw bytes of a F32/BF16/F16 tensor (e.g. straight from a memory-mapped file).</summary>
    /// <exception cref="ArgumentException">The byte length does not match the shape, or the dtype is not a float type.</exception>
    /// <exception cref="NonFiniteValueException">The data holds NaN or ±Infinity.</exception>
    public static QuantizedTensor Quantize(ReadOnlySpan<byte> data, DType dtype, IReadOnlyList<long> shape, QuantizationOptions? options = null, string? name = null)
    {
        options ??= QuantizationOptions.Default;
        BlockwiseLayout.ValidateBlockSize(options.BlockSize);
        long count = BlockwiseLayout.TryElementCount(shape)
            ?? throw new ArgumentException($"{(name is null ? "Shape" : $"Tensor '{name}'")}: shape [{string.Join(", ", shape)}] has a negative dimension or more than 2^63 elements.", nameof(shape));
        if (count > int.MaxValue || data.Length != count * dtype.SizeInBytes())
        {
            throw new ArgumentException($"{(name is null ? "Data" : $"Tensor '{name}'")}: {data.Length} bytes do not hold shape [{string.Join(", ", shape)}] of {dtype}.", nameof(data));
        }

        var packed = new byte[BlockwiseLayout.PackedByteCount(count)];
        var absmax = new float[BlockwiseLayout.BlockCount(count, options.BlockSize)];
        BlockwiseQuantizer.Quantize(data, dtype, packed, absmax, options.Type, options.BlockSize, name);
        AbsmaxStatistics stats = options.DoubleQuant && absmax.Length > 0 ? DoubleQuantization.Compress(absmax) : new PlainAbsmax(absmax);
        return new QuantizedTensor(packed, new QuantState(options.Type, options.BlockSize, shape, dtype, stats));
    }

    /// <summary>Dequantizes into float32.</summary>
    /// <exception cref="ArgumentException"><paramref name="output"/>'s length is not the element count.</exception>
    public void Dequantize(Span<float> output)
    {
        CheckOutput(output.Length);
        BlockwiseDequantizer.Dequantize(Packed.Span, State.Absmax.Decode(), State.Type, State.BlockSize, output);
    }

    /// <summary>Dequantizes into bf16.</summary>
    /// <exception cref="ArgumentException"><paramref name="output"/>'s length is not the element count.</exception>
    public void Dequantize(Span<BFloat16> output)
    {
        CheckOutput(output.Length);
        BlockwiseDequantizer.Dequantize(Packed.Span, State.Absmax.Decode(), State.Type, State.BlockSize, output);
    }

    /// <summary>Dequantizes into float16.</summary>
    /// <exception cref="ArgumentException"><paramref name="output"/>'s length is not the element count.</exception>
    public void Dequantize(Span<Half> output)
    {
        CheckOutput(output.Length);
        BlockwiseDequantizer.Dequantize(Packed.Span, State.Absmax.Decode(), State.Type, State.BlockSize, output);
    }

    /// <summary>Dequantizes to a new float32 array.</summary>
    public float[] DequantizeToSingle()
    {
        var result = new float[State.ElementCount];
        Dequantize(result);
        return result;
    }

    private void CheckOutput(int length)
    {
        if (length != State.ElementCount)
        {
            throw new ArgumentException($"The output holds {length} values; the tensor has {State.ElementCount}.", "output");
        }
    }
}
