using QLoRA.Core;
using QLoRA.Runtime.Engine;
using QLoRA.Runtime.Ops;
using QLoRA.Runtime.Tensors;
using Device = QLoRA.Runtime.Devices.Device;

namespace QLoRA.Runtime.Training;

/// <summary>AdamW (torch.optim.AdamW semantics) with float32 moments in device memory, one launch over the flat buffers.</summary>
public sealed class AdamWOptimizer : AdapterOptimizer
{
    private readonly DeviceTensor _m, _v;
    private readonly AdamWOptions _options;

    /// <summary>State for <paramref name="parameters"/>, zero-initialized.</summary>
    public AdamWOptimizer(Device device, LoraParameters parameters, AdamWOptions options)
    {
        _options = options;
        _m = DeviceTensor.Allocate(device, DType.F32, parameters.Count);
        _v = DeviceTensor.Allocate(device, DType.F32, parameters.Count);
        _m.Clear();
        _v.Clear();
    }

    /// <inheritdoc />
    public override long DeviceStateBytes => _m.ByteLength + _v.ByteLength;

    /// <inheritdoc />
    public override long StateBytes => DeviceStateBytes;

    /// <inheritdoc />
    public override void Step(LoraParameters parameters, int step, double learningRate, float gradientScale) =>
        AdamW.Step(parameters.Values, parameters.Gradients, _m, _v, step, _options with { LearningRate = learningRate }, gradientScale);

    /// <inheritdoc />
    public override (float[] M, float[] V) ReadState() => (_m.ToHost<float>(), _v.ToHost<float>());

    /// <inheritdoc />
    public override void WriteState(float[] m, float[] v)
    {
        _m.CopyFromHost<float>(m);
        _v.CopyFromHost<float>(v);
    }

    /// <inheritdoc />
    public override void Dispose()
    {
        _m.Dispose();
        _v.Dispose();
    }
}
