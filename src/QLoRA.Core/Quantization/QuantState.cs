namespace QLoRA.Core.Quantization;

/// <summary>
/// Everything needed to decode a 4-bit tensor besides its packed codes — the counterpart of bitsandbytes'
/// <c>QuantState</c>: quant type, block size, logical shape, original dtype and the absmax statistics.
/// </summary>
public sealed class QuantState
{
    /// <summary>Creates a state after checking it is self-consistent.</summary>
    /// <exception cref="ArgumentException">Shape, dtype or statistics disagree.</exception>
    public QuantState(QuantType type, int blockSize, IReadOnlyList<long> shape, DType dtype, AbsmaxStatistics absmax)
    {
        BlockwiseLayout.ValidateBlockSize(blockSize);
        ArgumentNullException.ThrowIfNull(shape);
        ArgumentNullException.ThrowIfNull(absmax);
        if (!dtype.IsQuantizableFloat())
        {
            throw new ArgumentException($"A 4-bit tensor's original dtype must be F32, BF16 or F16, not {dtype}.", nameof(dtype));
        }

        long count = BlockwiseLayout.TryElementCount(shape)
            ?? throw new ArgumentException($"Shape [{string.Join(", ", shape)}] has a negative dimension or more than 2^63 elements.", nameof(shape));

        long blocks = BlockwiseLayout.BlockCount(count, blockSize);
        if (absmax.Count != blocks)
        {
            throw new ArgumentException($"Shape [{string.Join(", ", shape)}] in blocks of {blockSize} needs {blocks} absmax values, not {absmax.Count}.", nameof(absmax));
        }

        Type = type;
        BlockSize = blockSize;
        Shape = [.. shape];
        Dtype = dtype;
        Absmax = absmax;
        ElementCount = count;
    }

    /// <summary>NF4 or FP4.</summary>
    public QuantType Type { get; }

    /// <summary>Values per absmax block.</summary>
    public int BlockSize { get; }

    /// <summary>Logical (unpacked) shape, e.g. [out, in] for a linear weight.</summary>
    public IReadOnlyList<long> Shape { get; }

    /// <summary>dtype of the tensor before quantization, and of its dequantized form.</summary>
    public DType Dtype { get; }

    /// <summary>Per-block absmax, plain or double-quantized.</summary>
    public AbsmaxStatistics Absmax { get; }

    /// <summary>Product of <see cref="Shape"/>.</summary>
    public long ElementCount { get; }

    /// <summary>Bytes of packed codes: ceil(n / 2).</summary>
    public long PackedBytes => BlockwiseLayout.PackedByteCount(ElementCount);

    /// <summary>True when the absmax is double-quantized.</summary>
    public bool IsDoubleQuantized => Absmax is DoubleQuantizedAbsmax;

    /// <summary>The 16-entry code table (<c>quant_map</c>).</summary>
    public ReadOnlySpan<float> Code => FourBitCodes.Values(Type);

    /// <summary>Storage bits per parameter including statistics (4.5 for NF4/64, ≈4.127 with double quantization).</summary>
    public double BitsPerParameter => ElementCount == 0 ? 0 : ((PackedBytes + Absmax.StorageBytes) * 8.0) / ElementCount;
}
