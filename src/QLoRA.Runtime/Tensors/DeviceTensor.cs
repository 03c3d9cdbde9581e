using System.Runtime.InteropServices;
using ILGPU;
using ILGPU.Runtime;
using QLoRA.Core;
using QLoRA.Runtime.Memory;
using Device = QLoRA.Runtime.Devices.Device;

namespace QLoRA.Runtime.Tensors;

/// <summary>
/// A dense row-major tensor in device memory: dtype (F32, BF16, F16, U8, I32, …), shape and storage from the
/// device's caching allocator. Views (<see cref="Reshape"/>, <see cref="Rows"/>) share the storage and do not own it.
/// </summary>
public sealed class DeviceTensor : IDisposable
{
    private readonly DeviceBlock? _owned;
    private readonly ArrayView<byte> _bytes;
    private readonly DeviceBlock _root;
    private readonly long _offset;

    private DeviceTensor(Device device, DType dtype, long[] shape, ArrayView<byte> bytes, DeviceBlock? owned, DeviceBlock root, long offset)
    {
        _root = root;
        _offset = offset;
        Device = device;
        Dtype = dtype;
        Shape = shape;
        _bytes = bytes;
        _owned = owned;
    }

    /// <summary>The device holding the data.</summary>
    public Device Device { get; }

    /// <summary>Element type.</summary>
    public DType Dtype { get; }

    /// <summary>Dimensions, row-major.</summary>
    public IReadOnlyList<long> Shape { get; }

    /// <summary>Number of elements.</summary>
    public long ElementCount => Shape.Aggregate(1L, (a, d) => a * d);

    /// <summary>Bytes of data.</summary>
    public long ByteLength => _bytes.Length;

    /// <summary>Device address of the first element (for native libraries such as cuBLAS).</summary>
    public IntPtr NativePointer => _root.NativePointer + (nint)_offset;

    /// <summary>Allocates an uninitialized tensor.</summary>
    /// <exception cref="DeviceOutOfMemoryException">The device cannot hold it.</exception>
    public static DeviceTensor Allocate(Device device, DType dtype, params long[] shape)
    {
        long bytes = checked(shape.Aggregate(1L, (a, d) => d >= 0 ? a * d : throw new ArgumentException($"Shape [{string.Join(", ", shape)}] has a negative dimension.", nameof(shape))) * dtype.SizeInBytes());
        DeviceBlock block = device.Allocator.Allocate(bytes, device.Stream);
        return new DeviceTensor(device, dtype, shape, block.View, block, block, 0);
    }

    /// <summary>Copies host data (raw elements of <paramref name="dtype"/>) to a new tensor.</summary>
    /// <exception cref="ArgumentException">The data length does not match the shape.</exception>
    public static DeviceTensor FromHost<T>(Device device, ReadOnlySpan<T> data, DType dtype, params long[] shape)
        where T : unmanaged
    {
        DeviceTensor tensor = Allocate(device, dtype, shape);
        ReadOnlySpan<byte> bytes = MemoryMarshal.AsBytes(data);
        if (bytes.Length != tensor.ByteLength)
        {
            tensor.Dispose();
            throw new ArgumentException($"{bytes.Length} bytes do not fill a {dtype} tensor of shape [{string.Join(", ", shape)}] ({tensor.ByteLength} bytes).", nameof(data));
        }

        tensor._bytes.CopyFromCPU(device.Stream, bytes.ToArray());
        return tensor;
    }

    /// <summary>
    /// Copies float32 host values to a new tensor of a compute dtype (F32, BF16 or F16; narrow dtypes are rounded to
    /// nearest even on the host, in parallel, by the kernels' own conversion, so no float32 copy ever reaches the device).
    /// </summary>
    /// <exception cref="ArgumentException">The data length does not match the shape, or the dtype is not a compute dtype.</exception>
    public static DeviceTensor FromSingle(Device device, ReadOnlySpan<float> data, DType dtype, params long[] shape)
    {
        switch (dtype)
        {
            case DType.F32:
                return FromHost(device, data, DType.F32, shape);
            case DType.BF16:
                return FromHost<ushort>(device, Narrow<Kernels.Bf16Element>(data), dtype, shape);
            case DType.F16:
                return FromHost<ushort>(device, Narrow<Kernels.F16Element>(data), dtype, shape);
            default:
                throw new ArgumentException($"{dtype} is not a compute dtype (F32, BF16, F16).", nameof(dtype));
        }
    }

    private static unsafe ushort[] Narrow<TE>(ReadOnlySpan<float> data)
        where TE : struct, Kernels.IElement<ushort>
    {
        var bits = new ushort[data.Length];
        int length = data.Length;
        const int Chunk = 1 << 20;
        fixed (float* pinned = data)
        {
            nint source = (nint)pinned; // the span stays pinned until every chunk is done (Parallel.For returns after them)
            Parallel.For(0, (length + Chunk - 1) / Chunk, c =>
            {
                TE e = default;
                var values = new ReadOnlySpan<float>((float*)source, length);
                int end = Math.Min(length, (c + 1) * Chunk);
                for (int i = c * Chunk; i < end; i++)
                {
                    bits[i] = e.Store(values[i]);
                }
            });
        }

        return bits;
    }

    /// <summary>The elements as float32 on the host (converted from BF16 or F16).</summary>
    /// <exception cref="ArgumentException">The dtype is not a compute dtype.</exception>
    public float[] ToSingle()
    {
        if (Dtype == DType.F32)
        {
            return ToHost<float>();
        }

        using DeviceTensor wide = Ops.Elementwise.ConvertTo(this, DType.F32);
        return wide.ToHost<float>();
    }

    /// <summary>Copies the tensor to a new host array of <typeparamref name="T"/> (after the work queued on the device's current stream).</summary>
    public T[] ToHost<T>()
        where T : unmanaged
    {
        CheckElement<T>();
        var bytes = new byte[ByteLength];
        AcceleratorStream stream = Device.Stream;
        _bytes.CopyToCPU(stream, bytes);
        stream.Synchronize(); // the caller reads the array next
        return MemoryMarshal.Cast<byte, T>(bytes).ToArray();
    }

    /// <summary>The elements as an ILGPU view for kernels.</summary>
    /// <exception cref="ArgumentException"><typeparamref name="T"/>'s size differs from the dtype's.</exception>
    public ArrayView<T> View<T>()
        where T : unmanaged
    {
        CheckElement<T>();
        return _bytes.Cast<T>();
    }

    /// <summary>The same storage with another shape of equal element count (a view; does not own the storage).</summary>
    public DeviceTensor Reshape(params long[] shape)
    {
        long count = shape.Aggregate(1L, (a, d) => a * d);
        if (count != ElementCount)
        {
            throw new ArgumentException($"Cannot view [{string.Join(", ", Shape)}] as [{string.Join(", ", shape)}]: element counts differ.", nameof(shape));
        }

        return new DeviceTensor(Device, Dtype, shape, _bytes, null, _root, _offset);
    }

    /// <summary>Rows [start, start + count) of the leading dimension (a view).</summary>
    public DeviceTensor Rows(long start, long count)
    {
        if (Shape.Count == 0 || start < 0 || count < 0 || start + count > Shape[0])
        {
            throw new ArgumentOutOfRangeException(nameof(start), $"Rows [{start}, {start + count}) are outside a tensor of shape [{string.Join(", ", Shape)}].");
        }

        long rowBytes = ByteLength / Shape[0];
        long[] shape = [count, .. Shape.Skip(1)];
        return new DeviceTensor(Device, Dtype, shape, _bytes.SubView(start * rowBytes, count * rowBytes), null, _root, _offset + (start * rowBytes));
    }

    /// <summary>
    /// A view of <paramref name="shape"/> elements of <paramref name="dtype"/> starting <paramref name="byteOffset"/>
    /// bytes into this tensor's storage: how an arena or a flat parameter buffer hands out its tensors.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">The view does not lie inside this tensor.</exception>
    internal DeviceTensor Slice(long byteOffset, DType dtype, params long[] shape)
    {
        long bytes = checked(shape.Aggregate(1L, (a, d) => d >= 0 ? a * d : throw new ArgumentException($"Shape [{string.Join(", ", shape)}] has a negative dimension.", nameof(shape))) * dtype.SizeInBytes());
        if (byteOffset < 0 || byteOffset > ByteLength || bytes > ByteLength - byteOffset)
        {
            throw new ArgumentOutOfRangeException(nameof(byteOffset), $"Bytes [{byteOffset}, {byteOffset + bytes}) are outside a tensor of {ByteLength} bytes.");
        }

        return new DeviceTensor(Device, dtype, shape, _bytes.SubView(byteOffset, bytes), null, _root, _offset + byteOffset);
    }

    /// <summary>Copies this tensor's bytes into <paramref name="destination"/> (same byte length) on the device's current stream.</summary>
    /// <exception cref="ArgumentException">The byte lengths differ.</exception>
    internal void CopyTo(DeviceTensor destination)
    {
        if (destination.ByteLength != ByteLength)
        {
            throw new ArgumentException($"Cannot copy {ByteLength} bytes into a tensor of {destination.ByteLength}.", nameof(destination));
        }

        _bytes.CopyTo(Device.Stream, destination._bytes);
    }

    /// <summary>Overwrites the tensor with host elements (their byte count must equal the tensor's) on the device's current stream.</summary>
    /// <exception cref="ArgumentException">The byte lengths differ.</exception>
    internal void CopyFromHost<T>(ReadOnlySpan<T> data)
        where T : unmanaged
    {
        ReadOnlySpan<byte> bytes = MemoryMarshal.AsBytes(data);
        if (bytes.Length != ByteLength)
        {
            throw new ArgumentException($"{bytes.Length} bytes do not fill a tensor of {ByteLength} bytes.", nameof(data));
        }

        _bytes.CopyFromCPU(Device.Stream, bytes.ToArray());
    }

    /// <summary>Sets every byte to zero on the device's current stream.</summary>
    internal void Clear() => _bytes.MemSetToZero(Device.Stream);

    private unsafe void CheckElement<T>()
        where T : unmanaged
    {
        if (sizeof(T) != Dtype.SizeInBytes())
        {
            throw new ArgumentException($"A {Dtype} tensor cannot be read as {typeof(T).Name} ({sizeof(T)} bytes per element).", nameof(T));
        }
    }

    /// <summary>Returns owned storage to the allocator (views do nothing).</summary>
    public void Dispose() => _owned?.Dispose();

    /// <inheritdoc />
    public override string ToString() => $"DeviceTensor({Dtype}, [{string.Join(", ", Shape)}])";
}
