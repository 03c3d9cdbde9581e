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

    /// <summary>Zero state for <paramref name="count"/> flat parameters.</summary>
    public AdamWOptimizer(Device device, long count, AdamWOptions options)
    {
        _options = options;
        _m = DeviceTensor.Allocate(device, DType.F32, count);
        _v = DeviceTensor.Allocate(device, DType.F32, count);
        _m.Clear();
        _v.Clear();
    }

    /// <inheritdoc />
    public override long DeviceStateBytes => _m.ByteLength + _v.ByteLength;

    /// <inheritdoc />
    public override long StateBytes => DeviceStateBytes;

    /// <inheritdoc />
    public override void Step(DeviceTensor values, DeviceTensor gradients, int step, double learningRate, float gradientScale) =>
        AdamW.Step(values, gradients, _m, _v, step, _options with { LearningRate = learningRate }, gradientScale);

    /// <inheritdoc />
    public override IReadOnlyDictionary<string, TensorData> ReadState() => new Dictionary<string, TensorData>
    {
        ["exp_avg"] = TensorData.FromSingle(_m.ToHost<float>(), _m.ElementCount),
        ["exp_avg_sq"] = TensorData.FromSingle(_v.ToHost<float>(), _v.ElementCount),
    };

    /// <inheritdoc />
    public override void WriteState(IReadOnlyDictionary<string, TensorData> state)
    {
        _m.CopyFromHost<byte>(Expect(state, "exp_avg", DType.F32, _m.ElementCount).Data);
        _v.CopyFromHost<byte>(Expect(state, "exp_avg_sq", DType.F32, _v.ElementCount).Data);
    }

    /// <inheritdoc />
    public override void Dispose()
    {
        _m.Dispose();
        _v.Dispose();
    }
}
