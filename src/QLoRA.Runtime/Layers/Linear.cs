using QLoRA.Core;
using QLoRA.Core.Weights;
using QLoRA.Runtime.Ops;
using QLoRA.Runtime.Tensors;
using Device = QLoRA.Runtime.Devices.Device;

namespace QLoRA.Runtime.Layers;

/// <summary>A frozen dense linear layer (e.g. lm_head kept unquantized): y = x Wᵀ, W [out, in] in float32 on the device.</summary>
public sealed class Linear : IDisposable
{
    private Linear(DeviceTensor weight)
    {
        Weight = weight;
        OutFeatures = checked((int)weight.Shape[0]);
        InFeatures = checked((int)weight.Shape[1]);
    }

    /// <summary>W [out, in].</summary>
    public DeviceTensor Weight { get; }

    /// <summary>Input features.</summary>
    public int InFeatures { get; }

    /// <summary>Output features.</summary>
    public int OutFeatures { get; }

    /// <summary>Loads checkpoint weight <paramref name="name"/> [out, in] (a dense float tensor).</summary>
    /// <exception cref="CheckpointFormatException">Missing, 4-bit, not float, or of another shape (both shapes named).</exception>
    public static Linear Load(Device device, IWeightSource source, string name, int inFeatures, int outFeatures)
    {
        source.Require(name, outFeatures, inFeatures);
        return new Linear(DeviceTensor.FromHost<float>(device, source.ReadSingle(name), DType.F32, outFeatures, inFeatures));
    }

    /// <summary>y = x Wᵀ.</summary>
    public void Forward(DeviceTensor x, DeviceTensor y) => Gemm.Multiply(x, Weight, y, transposeB: true);

    /// <summary>dx = dy W (the weight is frozen).</summary>
    public void Backward(DeviceTensor dy, DeviceTensor dx) => Gemm.Multiply(dy, Weight, dx);

    /// <summary>Frees the weight.</summary>
    public void Dispose() => Weight.Dispose();
}
