namespace QLoRA.Core.Quantization;

/// <summary>
/// Thrown when a tensor to be quantized holds NaN or ±Infinity: a block's absmax would be non-finite and every
/// value of the block would decode as garbage, so quantization refuses instead.
/// </summary>
public sealed class NonFiniteValueException : ArgumentException
{
    /// <summary>Creates the exception for the first non-finite element found.</summary>
    public NonFiniteValueException(string? tensorName, long elementIndex, float value)
        : base($"{(tensorName is null ? "Input" : $"Tensor '{tensorName}'")} holds a non-finite value ({value}) at element {elementIndex}; 4-bit quantization needs finite inputs.")
    {
        TensorName = tensorName;
        ElementIndex = elementIndex;
        Value = value;
    }

    /// <summary>The tensor's checkpoint name, when known.</summary>
    public string? TensorName { get; }

    /// <summary>Flat (row-major) index of the first non-finite element.</summary>
    public long ElementIndex { get; }

    /// <summary>The offending value (NaN or ±Infinity).</summary>
    public float Value { get; }
}
