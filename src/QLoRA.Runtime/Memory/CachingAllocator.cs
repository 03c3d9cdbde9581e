using ILGPU;
using ILGPU.Runtime;
using ILGPU.Runtime.Cuda;

namespace QLoRA.Runtime.Memory;

/// <summary>
/// Reuses freed device buffers by size class instead of returning them to the driver (device allocation and free
/// synchronize on CUDA). Small requests round up to 512 bytes, large ones (≥ 1 MiB) to 2 MiB. On allocation failure
/// the cache is released and the allocation retried once; a second failure is a <see cref="DeviceOutOfMemoryException"/>.
/// </summary>
public sealed class CachingAllocator : IDisposable
{
    private const long SmallRounding = 512;
    private const long LargeThreshold = 1L << 20;
    private const long LargeRounding = 2L << 20;

    private readonly Accelerator _accelerator;
    private readonly long? _limit;
    // Free blocks by (stream, size class): a block is recycled only on the stream that last used it, so the next user
    // is ordered after the previous one without a synchronization.
    private readonly Dictionary<(AcceleratorStream? Stream, long Size), Stack<MemoryBuffer1D<byte, Stride1D.Dense>>> _free = [];
    private readonly object _gate = new();

    /// <summary>Creates an allocator; <paramref name="limitBytes"/> caps reserved bytes (for tests and memory budgets).</summary>
    public CachingAllocator(Accelerator accelerator, long? limitBytes = null)
    {
        _accelerator = accelerator;
        _limit = limitBytes;
    }

    /// <summary>Bytes in live blocks (rounded sizes).</summary>
    public long AllocatedBytes { get; private set; }

    /// <summary>Bytes held from the device: live plus cached.</summary>
    public long ReservedBytes { get; private set; }

    /// <summary>Highest <see cref="AllocatedBytes"/> so far.</summary>
    public long PeakAllocatedBytes { get; private set; }

    /// <summary>Allocations served from the cache.</summary>
    public long CacheHits { get; private set; }

    /// <summary>The size class of a request.</summary>
    public static long RoundSize(long bytes) =>
        bytes < LargeThreshold ? Math.Max(SmallRounding, (bytes + SmallRounding - 1) / SmallRounding * SmallRounding) : (bytes + LargeRounding - 1) / LargeRounding * LargeRounding;

    /// <summary>A block of at least <paramref name="bytes"/> bytes; dispose it to return it to the cache.</summary>
    /// <param name="bytes">Requested size.</param>
    /// <param name="stream">The stream that will use the block (it is recycled only for that stream once freed).</param>
    /// <exception cref="DeviceOutOfMemoryException">The device (or the limit) cannot provide it.</exception>
    public DeviceBlock Allocate(long bytes, AcceleratorStream? stream = null)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(bytes);
        long size = RoundSize(bytes);
        lock (_gate)
        {
            MemoryBuffer1D<byte, Stride1D.Dense> buffer;
            if (_free.TryGetValue((stream, size), out var stack) && stack.Count > 0)
            {
                buffer = stack.Pop();
                CacheHits++;
            }
            else
            {
                buffer = AllocateFromDevice(bytes, size);
                ReservedBytes += size;
            }

            AllocatedBytes += size;
            PeakAllocatedBytes = Math.Max(PeakAllocatedBytes, AllocatedBytes);
            return new DeviceBlock(this, buffer, bytes, stream);
        }
    }

    private MemoryBuffer1D<byte, Stride1D.Dense> AllocateFromDevice(long requested, long size)
    {
        for (int attempt = 0; ; attempt++)
        {
            try
            {
                if (_limit is long limit && ReservedBytes + size > limit)
                {
                    throw new OutOfMemoryException($"limit of {limit} bytes");
                }

                return _accelerator.Allocate1D<byte>(size);
            }
            catch (Exception e) when (attempt == 0 && IsOutOfMemory(e))
            {
                ReleaseCache();
            }
            catch (Exception e) when (IsOutOfMemory(e))
            {
                long free = _limit is long l ? l - ReservedBytes : FreeDeviceBytes();
                throw new DeviceOutOfMemoryException(requested, free, AllocatedBytes, ReservedBytes, PeakAllocatedBytes, _accelerator.Name, e);
            }
        }
    }

    private static bool IsOutOfMemory(Exception e) =>
        e is OutOfMemoryException || (e is CudaException cuda && cuda.Error.Contains("OUT_OF_MEMORY", StringComparison.Ordinal));

    private long FreeDeviceBytes() => _accelerator is CudaAccelerator cuda ? cuda.GetFreeMemory() : GC.GetGCMemoryInfo().TotalAvailableMemoryBytes;

    /// <summary>Returns every cached (free) block to the device.</summary>
    public void ReleaseCache()
    {
        lock (_gate)
        {
            foreach (var stack in _free.Values)
            {
                while (stack.Count > 0)
                {
                    MemoryBuffer1D<byte, Stride1D.Dense> buffer = stack.Pop();
                    ReservedBytes -= buffer.Length;
                    buffer.Dispose();
                }
            }
        }
    }

    internal void Return(MemoryBuffer1D<byte, Stride1D.Dense> buffer, AcceleratorStream? stream)
    {
        lock (_gate)
        {
            AllocatedBytes -= buffer.Length;
            if (!_free.TryGetValue((stream, buffer.Length), out var stack))
            {
                stack = new Stack<MemoryBuffer1D<byte, Stride1D.Dense>>();
                _free[(stream, buffer.Length)] = stack;
            }

            stack.Push(buffer);
        }
    }

    /// <summary>Frees the cache (live blocks stay valid until their own disposal).</summary>
    public void Dispose() => ReleaseCache();
}

/// <summary>A device allocation from a <see cref="CachingAllocator"/>.</summary>
public sealed class DeviceBlock : IDisposable
{
    private readonly CachingAllocator _owner;
    private MemoryBuffer1D<byte, Stride1D.Dense>? _buffer;

    private readonly AcceleratorStream? _stream;

    internal DeviceBlock(CachingAllocator owner, MemoryBuffer1D<byte, Stride1D.Dense> buffer, long length, AcceleratorStream? stream)
    {
        _owner = owner;
        _stream = stream;
        _buffer = buffer;
        Length = length;
    }

    /// <summary>Requested length in bytes.</summary>
    public long Length { get; }

    /// <summary>The device address of the first byte (for native libraries such as cuBLAS).</summary>
    public IntPtr NativePointer => (_buffer ?? throw new ObjectDisposedException(nameof(DeviceBlock))).NativePtr;

    /// <summary>The bytes (first <see cref="Length"/> of the rounded buffer).</summary>
    public ArrayView<byte> View => (_buffer ?? throw new ObjectDisposedException(nameof(DeviceBlock))).View.SubView(0, Length);

    /// <summary>Returns the buffer to the allocator's cache.</summary>
    public void Dispose()
    {
        MemoryBuffer1D<byte, Stride1D.Dense>? buffer = Interlocked.Exchange(ref _buffer, null);
        if (buffer is not null)
        {
            _owner.Return(buffer, _stream);
        }
    }
}
