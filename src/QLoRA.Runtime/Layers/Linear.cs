using QLoRA.Core;
using QLoRA.Core.Weights;
using QLoRA.Runtime.Ops;
using QLoRA.Runtime.Tensors;
using Device = QLoRA.Runtime.Devices.Device;

namespace QLoRA.Runtime.Layers;

/// <summary>A frozen dense linear layer (e.g. lm_head kept unquantized): y = x Wᵀ, W [out, in] in the device's compute dtype, bias in F32.</summary>
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

    /// <summary>Loads checkpoint weight <paramref name="name"/> [out, in] (a dense float tensor), stored in <see cref="Device.ComputeDtype"/>.</summary>
    /// <exception cref="CheckpointFormatException">Missing, 4-bit, not float, or of another shape (both shapes named).</exception>
    public static Linear Load(Device device, IWeightSource source, string name, int inFeatures, int outFeatures)
    {
        source.Require(name, outFeatures, inFeatures);
        return new Linear(DeviceTensor.FromSingle(device, source.ReadSingle(name), device.ComputeDtype, outFeatures, inFeatures))
        {
            Bias = LoadOptionalBias(device, source, name, outFeatures),
        };
    }

    /// <summary>The frozen bias [out], when the checkpoint has one.</summary>
    public DeviceTensor? Bias { get; private init; }

    /// <summary>Loads <c>&lt;module&gt;.bias</c> for weight <paramref name="weightName"/> if the source has it (shape [out] checked).</summary>
    internal static DeviceTensor? LoadOptionalBias(Device device, IWeightSource source, string weightName, int outFeatures)
    {
        if (!weightName.EndsWith(".weight", StringComparison.Ordinal))
        {
            return null;
        }

        string biasName = weightName[..^".weight".Length] + ".bias";
        if (source.Describe(biasName) is null)
        {
            return null;
        }

        source.Require(biasName, outFeatures);
        return DeviceTensor.FromHost<float>(device, source.ReadSingle(biasName), DType.F32, outFeatures);
    }

    /// <summary>y = x Wᵀ (+ bias); x in the weight's dtype, y in it or F32 (e.g. float32 logits).</summary>
    public void Forward(DeviceTensor x, DeviceTensor y)
    {
        Gemm.Multiply(x, Weight, y, transposeB: true);
        if (Bias is not null)
        {
            Elementwise.AddBias(y, Bias);
        }
    }

    /// <summary>dx = dy W (the weight is frozen).</summary>
    public void Backward(DeviceTensor dy, DeviceTensor dx) => Gemm.Multiply(dy, Weight, dx);

    /// <summary>Frees the weight and bias.</summary>
    public void Dispose()
    {
        Weight.Dispose();
        Bias?.Dispose();
    }
}
