using ILGPU;
using ILGPU.Runtime;
using QLoRA.Runtime.Memory;
using Device = QLoRA.Runtime.Devices.Device;

namespace QLoRA.Runtime.Tensors;

/// <summary>A typed device array in a block of the device's caching allocator (so its bytes show in the allocator's figures).</summary>
internal sealed class DeviceArray<T> : IDisposable
    where T : unmanaged
{
    private readonly DeviceBlock _block;
    private readonly long _length;

    private DeviceArray(DeviceBlock block, long length)
    {
        _block = block;
        _length = length;
    }

    /// <summary>A copy of <paramref name="data"/> on the device (at least one element is allocated).</summary>
    public static unsafe DeviceArray<T> From(Device device, ReadOnlySpan<T> data)
    {
        long length = Math.Max(1, data.Length);
        var array = new DeviceArray<T>(device.Allocator.Allocate(checked(length * sizeof(T))), length);
        if (data.Length > 0)
        {
            array.View.SubView(0, data.Length).CopyFromCPU(device.Accelerator.DefaultStream, data.ToArray());
            device.Accelerator.DefaultStream.Synchronize(); // the host array may go away
        }

        return array;
    }

    public unsafe ArrayView<T> View => _block.View.SubView(0, _length * sizeof(T)).Cast<T>();

    public IntPtr NativePtr => _block.NativePointer;

    public void Dispose() => _block.Dispose();
}
