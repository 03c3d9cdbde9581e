using ILGPU;
using ILGPU.Runtime;
using QLoRA.Core;
using QLoRA.Core.Quantization;
using QLoRA.Runtime.Engine;
using QLoRA.Runtime.Kernels;
using QLoRA.Runtime.Memory;
using QLoRA.Runtime.Ops;
using QLoRA.Runtime.Tensors;
using Device = QLoRA.Runtime.Devices.Device;

namespace QLoRA.Runtime.Training;

/// <summary>
/// 8-bit AdamW (bitsandbytes' <c>AdamW8bit</c>, blockwise): both moments stored as one byte per element plus a float32
/// absmax per block of 256 (signed dynamic map for the first moment, unsigned for the second) — a quarter of AdamW's
/// state. Paged (<c>paged_adamw_8bit</c>), the codes and absmax live in pinned host memory and visit the device one
/// page (a multiple of 256 elements) at a time.
/// </summary>
public sealed class EightBitAdamWOptimizer : AdapterOptimizer
{
    /// <summary>Elements per quantization block of the state (bitsandbytes' blockwise optimizers).</summary>
    public const int BlockSize = EightBitAdamWKernels.BlockSize;

    private readonly Device _device;
    private readonly AdamWOptions _options;
    private readonly DeviceTensor _map1, _map2;
    private readonly long _count;
    private readonly int _page; // elements per page; the whole state when not paged
    private readonly DeviceTensor[] _codes1, _codes2, _absmax1, _absmax2; // device state (one) or two page buffers
    private readonly PinnedHostBuffer<byte>? _hostCodes1, _hostCodes2;
    private readonly PinnedHostBuffer<float>? _hostAbsmax1, _hostAbsmax2;
    private readonly PagePipeline? _pipeline; // paged: copies overlapped with the updates

    /// <summary>Zero state for <paramref name="count"/> flat parameters; paged when <paramref name="pageElements"/> is given (rounded up to a multiple of 256).</summary>
    /// <exception cref="ArgumentOutOfRangeException">The page is not positive, or paged state exceeds one host array.</exception>
    public EightBitAdamWOptimizer(Device device, long count, AdamWOptions options, int? pageElements = null)
    {
        _device = device;
        _options = options;
        _count = count;
        long blocks = (_count + BlockSize - 1) / BlockSize;
        _map1 = DeviceTensor.FromHost<float>(device, DynamicMap.Signed, DType.F32, 256);
        _map2 = DeviceTensor.FromHost<float>(device, DynamicMap.Unsigned, DType.F32, 256);
        if (pageElements is int requested)
        {
            ArgumentOutOfRangeException.ThrowIfLessThan(requested, 1, nameof(pageElements));
            ArgumentOutOfRangeException.ThrowIfGreaterThan(_count, Array.MaxLength, nameof(count));
            _page = (int)Math.Min(_count, (requested + BlockSize - 1L) / BlockSize * BlockSize);
            int pageBlocks = (_page + BlockSize - 1) / BlockSize;
            _hostCodes1 = new PinnedHostBuffer<byte>(device.Accelerator, (int)_count);
            _hostCodes2 = new PinnedHostBuffer<byte>(device.Accelerator, (int)_count);
            _hostAbsmax1 = new PinnedHostBuffer<float>(device.Accelerator, (int)blocks);
            _hostAbsmax2 = new PinnedHostBuffer<float>(device.Accelerator, (int)blocks);
            _codes1 = [DeviceTensor.Allocate(device, DType.U8, _page), DeviceTensor.Allocate(device, DType.U8, _page)];
            _codes2 = [DeviceTensor.Allocate(device, DType.U8, _page), DeviceTensor.Allocate(device, DType.U8, _page)];
            _absmax1 = [DeviceTensor.Allocate(device, DType.F32, pageBlocks), DeviceTensor.Allocate(device, DType.F32, pageBlocks)];
            _absmax2 = [DeviceTensor.Allocate(device, DType.F32, pageBlocks), DeviceTensor.Allocate(device, DType.F32, pageBlocks)];
            _pipeline = new PagePipeline(device);
        }
        else
        {
            _page = checked((int)Math.Min(int.MaxValue, _count));
            _codes1 = [DeviceTensor.Allocate(device, DType.U8, _count)];
            _codes2 = [DeviceTensor.Allocate(device, DType.U8, _count)];
            _absmax1 = [DeviceTensor.Allocate(device, DType.F32, blocks)];
            _absmax2 = [DeviceTensor.Allocate(device, DType.F32, blocks)];
            foreach (DeviceTensor t in _codes1.Concat(_codes2).Concat(_absmax1).Concat(_absmax2))
            {
                t.Clear(); // absmax 0: both moments start at zero whatever the codes
            }
        }
    }

    /// <summary>Whether the state is paged from host memory.</summary>
    public bool Paged => _hostCodes1 is not null;

    /// <inheritdoc />
    public override long DeviceStateBytes => _codes1.Concat(_codes2).Concat(_absmax1).Concat(_absmax2).Sum(t => t.ByteLength);

    /// <inheritdoc />
    public override long StateBytes => Paged ? DeviceStateBytes + (2 * _count) + (8 * ((_count + BlockSize - 1) / BlockSize)) : DeviceStateBytes;

    /// <inheritdoc />
    public override void Step(DeviceTensor values, DeviceTensor gradients, int step, double learningRate, float gradientScale)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(step, 1);
        double correction1 = 1 - Math.Pow(_options.Beta1, step), correction2 = Math.Sqrt(1 - Math.Pow(_options.Beta2, step));
        var h = new EightBitAdamWHyper((float)learningRate, (float)_options.Beta1, (float)_options.Beta2, (float)_options.Epsilon, (float)_options.WeightDecay,
            (float)(-learningRate * correction2 / correction1), (float)correction2, gradientScale);
        if (!Paged)
        {
            Launch(values, gradients, _codes1[0], _codes2[0], _absmax1[0], _absmax2[0], h);
            return;
        }

        int pages = checked((int)((_count + _page - 1) / _page));
        long Start(int page) => (long)page * _page;
        int Length(int page) => (int)Math.Min(_page, _count - Start(page));
        int Blocks(int page) => (Length(page) + BlockSize - 1) / BlockSize;
        int FirstBlock(int page) => (int)(Start(page) / BlockSize);
        (DeviceTensor C1, DeviceTensor C2, DeviceTensor A1, DeviceTensor A2) Buffers(int page) =>
            (_codes1[page & 1].Rows(0, Length(page)), _codes2[page & 1].Rows(0, Length(page)), _absmax1[page & 1].Rows(0, Blocks(page)), _absmax2[page & 1].Rows(0, Blocks(page)));
        _pipeline!.Run(
            pages,
            (page, stream) =>
            {
                var (c1, c2, a1, a2) = Buffers(page);
                c1.View<byte>().CopyFromCPUUnsafeAsync(stream, ref _hostCodes1!.Array[Start(page)], Length(page));
                c2.View<byte>().CopyFromCPUUnsafeAsync(stream, ref _hostCodes2!.Array[Start(page)], Length(page));
                a1.View<float>().CopyFromCPUUnsafeAsync(stream, ref _hostAbsmax1!.Array[FirstBlock(page)], Blocks(page));
                a2.View<float>().CopyFromCPUUnsafeAsync(stream, ref _hostAbsmax2!.Array[FirstBlock(page)], Blocks(page));
            },
            page =>
            {
                var (c1, c2, a1, a2) = Buffers(page);
                Launch(values.Rows(Start(page), Length(page)), gradients.Rows(Start(page), Length(page)), c1, c2, a1, a2, h);
            },
            (page, stream) =>
            {
                var (c1, c2, a1, a2) = Buffers(page);
                c1.View<byte>().CopyToCPUUnsafeAsync(stream, ref _hostCodes1!.Array[Start(page)], Length(page));
                c2.View<byte>().CopyToCPUUnsafeAsync(stream, ref _hostCodes2!.Array[Start(page)], Length(page));
                a1.View<float>().CopyToCPUUnsafeAsync(stream, ref _hostAbsmax1!.Array[FirstBlock(page)], Blocks(page));
                a2.View<float>().CopyToCPUUnsafeAsync(stream, ref _hostAbsmax2!.Array[FirstBlock(page)], Blocks(page));
            });
    }

    private void Launch(DeviceTensor p, DeviceTensor g, DeviceTensor c1, DeviceTensor c2, DeviceTensor a1, DeviceTensor a2, EightBitAdamWHyper h)
    {
        var kernel = _device.Kernel(static a => a.LoadKernel<ArrayView<float>, ArrayView<float>, ArrayView<byte>, ArrayView<byte>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, long, EightBitAdamWHyper>(EightBitAdamWKernels.Step));
        kernel(_device.Stream, _device.GridStride, p.View<float>(), g.View<float>(), c1.View<byte>(), c2.View<byte>(), a1.View<float>(), a2.View<float>(), _map1.View<float>(), _map2.View<float>(), p.ElementCount, h);
    }

    /// <inheritdoc />
    public override IReadOnlyDictionary<string, TensorData> ReadState()
    {
        long blocks = (_count + BlockSize - 1) / BlockSize;
        if (Paged)
        {
            return new Dictionary<string, TensorData>
            {
                ["state1"] = new(DType.U8, [_count], (byte[])_hostCodes1!.Array.Clone()),
                ["state2"] = new(DType.U8, [_count], (byte[])_hostCodes2!.Array.Clone()),
                ["absmax1"] = TensorData.FromSingle(_hostAbsmax1!.Array, blocks),
                ["absmax2"] = TensorData.FromSingle(_hostAbsmax2!.Array, blocks),
            };
        }

        return new Dictionary<string, TensorData>
        {
            ["state1"] = new(DType.U8, [_count], _codes1[0].ToHost<byte>()),
            ["state2"] = new(DType.U8, [_count], _codes2[0].ToHost<byte>()),
            ["absmax1"] = TensorData.FromSingle(_absmax1[0].ToHost<float>(), blocks),
            ["absmax2"] = TensorData.FromSingle(_absmax2[0].ToHost<float>(), blocks),
        };
    }

    /// <inheritdoc />
    public override void WriteState(IReadOnlyDictionary<string, TensorData> state)
    {
        long blocks = (_count + BlockSize - 1) / BlockSize;
        byte[] s1 = Expect(state, "state1", DType.U8, _count).Data, s2 = Expect(state, "state2", DType.U8, _count).Data;
        byte[] a1 = Expect(state, "absmax1", DType.F32, blocks).Data, a2 = Expect(state, "absmax2", DType.F32, blocks).Data;
        if (Paged)
        {
            s1.CopyTo(_hostCodes1!.Array, 0);
            s2.CopyTo(_hostCodes2!.Array, 0);
            a1.AsSpan().CopyTo(System.Runtime.InteropServices.MemoryMarshal.AsBytes(_hostAbsmax1!.Span));
            a2.AsSpan().CopyTo(System.Runtime.InteropServices.MemoryMarshal.AsBytes(_hostAbsmax2!.Span));
            return;
        }

        _codes1[0].CopyFromHost<byte>(s1);
        _codes2[0].CopyFromHost<byte>(s2);
        _absmax1[0].CopyFromHost<byte>(a1);
        _absmax2[0].CopyFromHost<byte>(a2);
    }

    /// <inheritdoc />
    public override void Dispose()
    {
        foreach (DeviceTensor t in _codes1.Concat(_codes2).Concat(_absmax1).Concat(_absmax2).Append(_map1).Append(_map2))
        {
            t.Dispose();
        }

        _pipeline?.Dispose();
        _hostCodes1?.Dispose();
        _hostCodes2?.Dispose();
        _hostAbsmax1?.Dispose();
        _hostAbsmax2?.Dispose();
    }
}
