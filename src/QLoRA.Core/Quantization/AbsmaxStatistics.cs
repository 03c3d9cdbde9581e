namespace QLoRA.Core.Quantization;

/// <summary>The per-block absmax constants of a 4-bit tensor: stored plainly or double-quantized.</summary>
public abstract class AbsmaxStatistics
{
    /// <summary>Number of blocks (absmax values).</summary>
    public abstract int Count { get; }

    /// <summary>Bytes these statistics occupy when stored.</summary>
    public abstract long StorageBytes { get; }

    /// <summary>Writes the float32 absmax of every block into <paramref name="destination"/>.</summary>
    /// <exception cref="ArgumentException"><paramref name="destination"/> is shorter than <see cref="Count"/>.</exception>
    public abstract void Decode(Span<float> destination);

    /// <summary>The decoded absmax values as a new array.</summary>
    public float[] Decode()
    {
        var result = new float[Count];
        Decode(result);
        return result;
    }
}

/// <summary>One float32 absmax per block (bitsandbytes without <c>compress_statistics</c>).</summary>
public sealed class PlainAbsmax : AbsmaxStatistics
{
    /// <summary>Wraps the absmax values (not copied).</summary>
    public PlainAbsmax(float[] values) => Values = values ?? throw new ArgumentNullException(nameof(values));

    /// <summary>The absmax of each block.</summary>
    public float[] Values { get; }

    /// <inheritdoc />
    public override int Count => Values.Length;

    /// <inheritdoc />
    public override long StorageBytes => Values.Length * 4L;

    /// <inheritdoc />
    public override void Decode(Span<float> destination)
    {
        BlockwiseQuantizer.CheckLength(destination.Length, Count, nameof(destination));
        Values.CopyTo(destination);
    }
}

/// <summary>
/// Double-quantized absmax (bitsandbytes <c>compress_statistics</c>): <c>absmax = code[q] × nestedAbsmax[i / nestedBlockSize] + offset</c>,
/// computed in float32 (multiply, then add).
/// </summary>
public sealed class DoubleQuantizedAbsmax : AbsmaxStatistics
{
    /// <summary>Wraps stored statistics (not copied) after checking their sizes agree.</summary>
    /// <exception cref="ArgumentException">Sizes disagree: codes need ceil(count / nestedBlockSize) nested maxima and a 256-entry map.</exception>
    public DoubleQuantizedAbsmax(byte[] codes, float[] nestedAbsmax, float[] nestedCode, int nestedBlockSize, float offset)
    {
        ArgumentNullException.ThrowIfNull(codes);
        ArgumentNullException.ThrowIfNull(nestedAbsmax);
        ArgumentNullException.ThrowIfNull(nestedCode);
        if (nestedBlockSize <= 0)
        {
            throw new ArgumentOutOfRangeException(nameof(nestedBlockSize), nestedBlockSize, "Nested block size must be positive.");
        }

        if (nestedCode.Length != 256)
        {
            throw new ArgumentException($"The nested quant map has {nestedCode.Length} entries; 256 are needed.", nameof(nestedCode));
        }

        long needed = BlockwiseLayout.BlockCount(codes.Length, nestedBlockSize);
        if (nestedAbsmax.Length != needed)
        {
            throw new ArgumentException($"{codes.Length} absmax codes in nested blocks of {nestedBlockSize} need {needed} nested absmax values, not {nestedAbsmax.Length}.", nameof(nestedAbsmax));
        }

        if (!float.IsFinite(offset))
        {
            throw new ArgumentException($"The nested offset {offset} is not finite.", nameof(offset));
        }

        Codes = codes;
        NestedAbsmax = nestedAbsmax;
        NestedCode = nestedCode;
        NestedBlockSize = nestedBlockSize;
        Offset = offset;
    }

    /// <summary>One 8-bit code per block.</summary>
    public byte[] Codes { get; }

    /// <summary>float32 absmax of each nested block (of <see cref="NestedBlockSize"/> codes).</summary>
    public float[] NestedAbsmax { get; }

    /// <summary>The 256-entry 8-bit map the codes index (normally <see cref="DynamicMap.Signed"/>).</summary>
    public float[] NestedCode { get; }

    /// <summary>Codes per nested block (256 in bitsandbytes).</summary>
    public int NestedBlockSize { get; }

    /// <summary>The mean that was subtracted before nested quantization.</summary>
    public float Offset { get; }

    /// <inheritdoc />
    public override int Count => Codes.Length;

    /// <inheritdoc />
    public override long StorageBytes => Codes.Length + (NestedAbsmax.Length * 4L) + (NestedCode.Length * 4L) + 4;

    /// <inheritdoc />
    public override void Decode(Span<float> destination)
    {
        BlockwiseQuantizer.CheckLength(destination.Length, Count, nameof(destination));
        for (int i = 0; i < Codes.Length; i++)
        {
            float scaled = NestedCode[Codes[i]] * NestedAbsmax[i / NestedBlockSize];
            destination[i] = scaled + Offset;
        }
    }
}
