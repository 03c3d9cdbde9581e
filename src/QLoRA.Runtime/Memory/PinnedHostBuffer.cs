using ILGPU;
using ILGPU.Runtime;

namespace QLoRA.Runtime.Memory;

/// <summary>
/// Host memory pinned (GC-pinned and page-locked with the driver) for fast, asynchronous host↔device copies: the
/// staging area of weight uploads and of optimizer state paged out of device memory.
/// </summary>
public sealed class PinnedHostBuffer<T> : IDisposable
    where T : unmanaged
{
    private readonly PageLockScope<T> _scope;

    /// <summary>Allocates <paramref name="length"/> elements pinned for <paramref name="accelerator"/>.</summary>
    public PinnedHostBuffer(Accelerator accelerator, int length)
    {
        Array = GC.AllocateArray<T>(length, pinned: true);
        _scope = accelerator.CreatePageLockFromPinned(Array);
    }

    /// <summary>The host elements (pinned: never moved by the GC).</summary>
    public T[] Array { get; }

    /// <summary>The elements as a span.</summary>
    public Span<T> Span => Array;

    /// <summary>Queues a copy of the host elements into <paramref name="destination"/> on <paramref name="stream"/>.</summary>
    public void CopyToDeviceAsync(AcceleratorStream stream, ArrayView<T> destination) => destination.CopyFromPageLockedAsync(stream, _scope);

    /// <summary>Queues a copy of <paramref name="source"/> into the host elements on <paramref name="stream"/>.</summary>
    public void CopyFromDeviceAsync(AcceleratorStream stream, ArrayView<T> source) => source.CopyToPageLockedAsync(stream, _scope);

    /// <summary>Releases the page lock (the array itself is left to the GC).</summary>
    public void Dispose() => _scope.Dispose();
}
