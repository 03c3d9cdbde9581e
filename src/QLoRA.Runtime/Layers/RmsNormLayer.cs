using QLoRA.Core;
using QLoRA.Core.Weights;
using QLoRA.Runtime.Ops;
using QLoRA.Runtime.Tensors;
using Device = QLoRA.Runtime.Devices.Device;

namespace QLoRA.Runtime.Layers;

/// <summary>RMSNorm with its weight [dim] (frozen unless listed in modules_to_save) and the gradient slot for it.</summary>
public sealed class RmsNormLayer : IDisposable
{
    private RmsNormLayer(DeviceTensor weight, float eps)
    {
        Weight = weight;
        Epsilon = eps;
        Dim = checked((int)weight.Shape[0]);
    }

    /// <summary>The weight [dim].</summary>
    public DeviceTensor Weight { get; }

    /// <summary>rms_norm_eps.</summary>
    public float Epsilon { get; }

    /// <summary>Normalized width.</summary>
    public int Dim { get; }

    /// <summary>Loads checkpoint weight <paramref name="name"/> [dim].</summary>
    /// <exception cref="CheckpointFormatException">Missing, not float, or of another shape (both shapes named).</exception>
    public static RmsNormLayer Load(Device device, IWeightSource source, string name, int dim, float eps)
    {
        source.Require(name, dim);
        return new RmsNormLayer(DeviceTensor.FromHost<float>(device, source.ReadSingle(name), DType.F32, dim), eps);
    }

    /// <summary>y = w ⊙ x / rms(x); <paramref name="inverseRms"/> [rows] is kept for the backward.</summary>
    public void Forward(DeviceTensor x, DeviceTensor y, DeviceTensor inverseRms) => RmsNorm.Forward(x, Weight, y, inverseRms, Epsilon);

    /// <summary>dx from dy, and dW added to <paramref name="dWeight"/> when the weight is trained (null: frozen).</summary>
    public void Backward(DeviceTensor x, DeviceTensor dy, DeviceTensor inverseRms, DeviceTensor dx, DeviceTensor? dWeight) =>
        RmsNorm.Backward(x, Weight, dy, inverseRms, dx, dWeight, accumulate: true);

    /// <summary>Frees the weight.</summary>
    public void Dispose() => Weight.Dispose();
}
