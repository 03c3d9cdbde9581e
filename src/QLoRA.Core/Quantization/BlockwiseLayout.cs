namespace QLoRA.Core.Quantization;

/// <summary>Sizes of the blockwise 4-bit layout: one absmax per block, two codes per byte.</summary>
public static class BlockwiseLayout
{
    /// <summary>Smallest supported block size.</summary>
    public const int MinBlockSize = 32;

    /// <summary>Largest supported block size.</summary>
    public const int MaxBlockSize = 4096;

    /// <summary>bitsandbytes' nested block size for double quantization.</summary>
    public const int NestedBlockSize = 256;

    /// <summary>True for powers of two in 32..4096.</summary>
    public static bool IsValidBlockSize(int blockSize) =>
        blockSize is >= MinBlockSize and <= MaxBlockSize && (blockSize & (blockSize - 1)) == 0;

    /// <summary>True for nested (double-quantization) block sizes this library decodes: powers of two in 32..4096.</summary>
    public static bool IsValidNestedBlockSize(int blockSize) => IsValidBlockSize(blockSize);

    /// <summary>Throws unless <paramref name="blockSize"/> is a power of two in 32..4096.</summary>
    /// <exception cref="ArgumentOutOfRangeException">The block size is not supported.</exception>
    public static void ValidateBlockSize(int blockSize)
    {
        if (!IsValidBlockSize(blockSize))
        {
            throw new ArgumentOutOfRangeException(nameof(blockSize), blockSize, "Block size must be a power of two from 32 to 4096.");
        }
    }

    /// <summary>Number of blocks (absmax values) for <paramref name="elementCount"/> elements: ceil(n / blockSize).</summary>
    /// <exception cref="ArgumentOutOfRangeException">A negative count, or a block size that is not a power of two in 32..4096.</exception>
    public static long BlockCount(long elementCount, int blockSize)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(elementCount);
        ValidateBlockSize(blockSize);
        return elementCount / blockSize + (elementCount % blockSize != 0 ? 1 : 0);   // no overflow near long.MaxValue
    }

    /// <summary>Packed byte count for <paramref name="elementCount"/> 4-bit codes: ceil(n / 2).</summary>
    /// <exception cref="ArgumentOutOfRangeException">A negative count.</exception>
    public static long PackedByteCount(long elementCount)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(elementCount);
        return elementCount / 2 + (elementCount & 1);
    }

    /// <summary>The element count of <paramref name="shape"/>, or null when a dimension is negative or the product overflows.</summary>
    public static long? TryElementCount(IReadOnlyList<long> shape)
    {
        long count = 1;
        foreach (long d in shape)
        {
            if (d < 0 || (d != 0 && count > long.MaxValue / d))
            {
                return null;
            }

            count *= d;
        }

        return count;
    }
}
