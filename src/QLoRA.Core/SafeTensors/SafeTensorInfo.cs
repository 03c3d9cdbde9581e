namespace QLoRA.Core.SafeTensors;

/// <summary>One tensor entry of a safetensors header.</summary>
/// <param name="Name">Tensor name.</param>
/// <param name="Dtype">Element type.</param>
/// <param name="Shape">Dimensions (empty for a scalar).</param>
/// <param name="Begin">Start offset in the data buffer (after the header).</param>
/// <param name="End">End offset (exclusive) in the data buffer.</param>
public sealed record SafeTensorInfo(string Name, DType Dtype, IReadOnlyList<long> Shape, long Begin, long End)
{
    /// <summary>Number of elements (product of the shape; 1 for a scalar).</summary>
    public long ElementCount
    {
        get
        {
            long n = 1;
            foreach (long d in Shape)
            {
                n *= d;
            }

            return n;
        }
    }

    /// <summary>Bytes of data.</summary>
    public long ByteLength => End - Begin;

    /// <summary>Shape as text, e.g. <c>[4096, 14336]</c>.</summary>
    public string ShapeText => $"[{string.Join(", ", Shape)}]";
}

/// <summary>A tensor to be written: name, dtype and shape (its bytes come later, streamed).</summary>
/// <param name="Name">Tensor name; must be unique in the file and not <c>__metadata__</c>.</param>
/// <param name="Dtype">Element type.</param>
/// <param name="Shape">Dimensions.</param>
public sealed record SafeTensorSpec(string Name, DType Dtype, IReadOnlyList<long> Shape)
{
    /// <summary>Bytes the tensor's data occupies.</summary>
    public long ByteLength
    {
        get
        {
            long n = Dtype.SizeInBytes();
            foreach (long d in Shape)
            {
                n = checked(n * d);
            }

            return n;
        }
    }
}
