namespace QLoRA.Runtime.Memory;

/// <summary>
/// A device allocation failed even after the allocator released its cache. Says what was asked, what was free and
/// in use, and what to change.
/// </summary>
public sealed class DeviceOutOfMemoryException(long requested, long free, long allocated, long reserved, long peak, string device, Exception? inner = null)
    : Exception(
        $"Out of memory on {device}: {Format(requested)} requested, {Format(free)} free; this process has {Format(allocated)} allocated " +
        $"({Format(reserved)} reserved, peak {Format(peak)}). Reduce the batch size or sequence length, enable gradient checkpointing, " +
        "or page optimizer state to the host.", inner)
{
    /// <summary>Bytes asked for.</summary>
    public long RequestedBytes { get; } = requested;

    /// <summary>Bytes the device reported free.</summary>
    public long FreeBytes { get; } = free;

    /// <summary>Bytes in live allocations.</summary>
    public long AllocatedBytes { get; } = allocated;

    /// <summary>Peak of allocated bytes.</summary>
    public long PeakBytes { get; } = peak;

    internal static string Format(long bytes) => bytes switch
    {
        >= 1L << 30 => $"{bytes / (double)(1L << 30):F2} GiB",
        >= 1L << 20 => $"{bytes / (double)(1L << 20):F1} MiB",
        >= 1L << 10 => $"{bytes / 1024.0:F1} KiB",
        _ => $"{bytes} B",
    };
}
