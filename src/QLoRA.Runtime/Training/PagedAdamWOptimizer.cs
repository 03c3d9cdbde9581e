using ILGPU;
using ILGPU.Runtime;
using QLoRA.Core;
using QLoRA.Runtime.Engine;
using QLoRA.Runtime.Memory;
using QLoRA.Runtime.Ops;
using QLoRA.Runtime.Tensors;
using Device = QLoRA.Runtime.Devices.Device;

namespace QLoRA.Runtime.Training;

/// <summary>
/// Paged AdamW: the float32 moments live in pinned host memory and visit the device one fixed-size page of the flat
/// state at a time (two page buffers, so page i+1's upload is queued while page i updates), so the optimizer's device
/// memory is O(page) whatever the adapters' size. Same arithmetic as <see cref="AdamWOptimizer"/>: identical results.
/// </summary>
public sealed class PagedAdamWOptimizer : AdapterOptimizer
{
    /// <summary>Default page: 1 Mi elements (4 MiB per moment).</summary>
    public const int DefaultPageElements = 1 << 20;

    private readonly Device _device;
    private readonly AdamWOptions _options;
    private readonly PinnedHostBuffer<float> _m, _v;
    private readonly DeviceTensor[] _pageM, _pageV;
    private readonly int _page;

    /// <summary>Zero host state for <paramref name="count"/> flat parameters, paged in pages of <paramref name="pageElements"/>.</summary>
    /// <exception cref="ArgumentOutOfRangeException">The page is not positive, or the state exceeds one host array.</exception>
    public PagedAdamWOptimizer(Device device, long count, AdamWOptions options, int pageElements = DefaultPageElements)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(pageElements, 1);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(count, Array.MaxLength, nameof(count));
        _device = device;
        _options = options;
        int elements = (int)count;
        _page = Math.Min(pageElements, elements);
        _m = new PinnedHostBuffer<float>(device.Accelerator, elements);
        _v = new PinnedHostBuffer<float>(device.Accelerator, elements);
        _pageM = [DeviceTensor.Allocate(device, DType.F32, _page), DeviceTensor.Allocate(device, DType.F32, _page)];
        _pageV = [DeviceTensor.Allocate(device, DType.F32, _page), DeviceTensor.Allocate(device, DType.F32, _page)];
    }

    /// <inheritdoc />
    public override long DeviceStateBytes => 4L * _page * sizeof(float);

    /// <inheritdoc />
    public override long StateBytes => DeviceStateBytes + (2L * _m.Array.Length * sizeof(float));

    /// <summary>Elements per page.</summary>
    public int PageElements => _page;

    /// <inheritdoc />
    public override void Step(DeviceTensor values, DeviceTensor gradients, int step, double learningRate, float gradientScale)
    {
        AdamWOptions options = _options with { LearningRate = learningRate };
        AcceleratorStream stream = _device.Stream;
        int count = _m.Array.Length;
        for (int start = 0, page = 0; start < count; start += _page, page++)
        {
            int n = Math.Min(_page, count - start);
            int slot = page & 1;
            DeviceTensor m = _pageM[slot].Rows(0, n), v = _pageV[slot].Rows(0, n);
            // In stream order: upload this page's moments, update, download them; the copies are asynchronous against
            // the host, and the next page's upload goes to the other buffer, so nothing waits on a finished page.
            m.View<float>().CopyFromCPUUnsafeAsync(stream, ref _m.Array[start], n);
            v.View<float>().CopyFromCPUUnsafeAsync(stream, ref _v.Array[start], n);
            AdamW.Step(values.Rows(start, n), gradients.Rows(start, n), m, v, step, options, gradientScale);
            m.View<float>().CopyToCPUUnsafeAsync(stream, ref _m.Array[start], n);
            v.View<float>().CopyToCPUUnsafeAsync(stream, ref _v.Array[start], n);
        }

        stream.Synchronize(); // the host state is complete when the step returns
    }

    /// <inheritdoc />
    public override IReadOnlyDictionary<string, TensorData> ReadState() => new Dictionary<string, TensorData>
    {
        ["exp_avg"] = TensorData.FromSingle(_m.Array, _m.Array.Length),
        ["exp_avg_sq"] = TensorData.FromSingle(_v.Array, _v.Array.Length),
    };

    /// <inheritdoc />
    public override void WriteState(IReadOnlyDictionary<string, TensorData> state)
    {
        Expect(state, "exp_avg", DType.F32, _m.Array.Length).Data.AsSpan().CopyTo(System.Runtime.InteropServices.MemoryMarshal.AsBytes(_m.Span));
        Expect(state, "exp_avg_sq", DType.F32, _v.Array.Length).Data.AsSpan().CopyTo(System.Runtime.InteropServices.MemoryMarshal.AsBytes(_v.Span));
    }

    /// <inheritdoc />
    public override void Dispose()
    {
        _m.Dispose();
        _v.Dispose();
        foreach (DeviceTensor t in _pageM.Concat(_pageV))
        {
            t.Dispose();
        }
    }
}
