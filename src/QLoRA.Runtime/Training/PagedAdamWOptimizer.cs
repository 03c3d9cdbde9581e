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

    /// <summary>Host state for <paramref name="parameters"/>, zero-initialized, paged in pages of <paramref name="pageElements"/>.</summary>
    /// <exception cref="ArgumentOutOfRangeException">The page is not positive, or the state exceeds one host array.</exception>
    public PagedAdamWOptimizer(Device device, LoraParameters parameters, AdamWOptions options, int pageElements = DefaultPageElements)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(pageElements, 1);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(parameters.Count, Array.MaxLength, nameof(parameters));
        _device = device;
        _options = options;
        int count = (int)parameters.Count;
        _page = (int)Math.Min(pageElements, count);
        _m = new PinnedHostBuffer<float>(device.Accelerator, count);
        _v = new PinnedHostBuffer<float>(device.Accelerator, count);
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
    public override void Step(LoraParameters parameters, int step, double learningRate, float gradientScale)
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
            AdamW.Step(parameters.Values.Rows(start, n), parameters.Gradients.Rows(start, n), m, v, step, options, gradientScale);
            m.View<float>().CopyToCPUUnsafeAsync(stream, ref _m.Array[start], n);
            v.View<float>().CopyToCPUUnsafeAsync(stream, ref _v.Array[start], n);
        }

        stream.Synchronize(); // the host state is complete when the step returns
    }

    /// <inheritdoc />
    public override (float[] M, float[] V) ReadState() => ((float[])_m.Array.Clone(), (float[])_v.Array.Clone());

    /// <inheritdoc />
    public override void WriteState(float[] m, float[] v)
    {
        if (m.Length != _m.Array.Length || v.Length != _v.Array.Length)
        {
            throw new ArgumentException($"Optimizer state of {m.Length} and {v.Length} elements for parameters of {_m.Array.Length}.");
        }

        m.CopyTo(_m.Array, 0);
        v.CopyTo(_v.Array, 0);
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
