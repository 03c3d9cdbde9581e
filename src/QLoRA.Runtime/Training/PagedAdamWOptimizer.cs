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
/// state at a time (two page buffers; page i+1 uploads and page i−1 downloads on their own streams while page i
/// updates, see <see cref="PagePipeline"/>), so the optimizer's device memory is O(page) whatever the adapters' size. Same arithmetic as <see cref="AdamWOptimizer"/>: identical results.
/// </summary>
public sealed class PagedAdamWOptimizer : AdapterOptimizer
{
    /// <summary>Default page: 1 Mi elements (4 MiB per moment).</summary>
    public const int DefaultPageElements = 1 << 20;

    private readonly AdamWOptions _options;
    private readonly PinnedHostBuffer<float> _m, _v;
    private readonly DeviceTensor[] _pageM, _pageV;
    private readonly int _page;
    private readonly PagePipeline _pipeline;

    /// <summary>Zero host state for <paramref name="count"/> flat parameters, paged in pages of <paramref name="pageElements"/>.</summary>
    /// <exception cref="ArgumentOutOfRangeException">The page is not positive, or the state exceeds one host array.</exception>
    public PagedAdamWOptimizer(Device device, long count, AdamWOptions options, int pageElements = DefaultPageElements)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(pageElements, 1);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(count, Array.MaxLength, nameof(count));
        _options = options;
        int elements = (int)count;
        _page = Math.Min(pageElements, elements);
        _m = new PinnedHostBuffer<float>(device.Accelerator, elements);
        _v = new PinnedHostBuffer<float>(device.Accelerator, elements);
        _pageM = [DeviceTensor.Allocate(device, DType.F32, _page), DeviceTensor.Allocate(device, DType.F32, _page)];
        _pageV = [DeviceTensor.Allocate(device, DType.F32, _page), DeviceTensor.Allocate(device, DType.F32, _page)];
        _pipeline = new PagePipeline(device);
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
        int count = _m.Array.Length, pages = (count + _page - 1) / _page;
        int Start(int page) => page * _page;
        int Length(int page) => Math.Min(_page, count - Start(page));
        DeviceTensor M(int page) => _pageM[page & 1].Rows(0, Length(page));
        DeviceTensor V(int page) => _pageV[page & 1].Rows(0, Length(page));
        _pipeline.Run(
            pages,
            (page, stream) =>
            {
                M(page).View<float>().CopyFromCPUUnsafeAsync(stream, ref _m.Array[Start(page)], Length(page));
                V(page).View<float>().CopyFromCPUUnsafeAsync(stream, ref _v.Array[Start(page)], Length(page));
            },
            page => AdamW.Step(values.Rows(Start(page), Length(page)), gradients.Rows(Start(page), Length(page)), M(page), V(page), step, options, gradientScale),
            (page, stream) =>
            {
                M(page).View<float>().CopyToCPUUnsafeAsync(stream, ref _m.Array[Start(page)], Length(page));
                V(page).View<float>().CopyToCPUUnsafeAsync(stream, ref _v.Array[Start(page)], Length(page));
            });
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
        _pipeline.Dispose();
        _m.Dispose();
        _v.Dispose();
        foreach (DeviceTensor t in _pageM.Concat(_pageV))
        {
            t.Dispose();
        }
    }
}
