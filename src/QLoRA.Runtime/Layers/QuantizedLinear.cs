using QLoRA.Core;
using QLoRA.Runtime.Ops;
using QLoRA.Runtime.Tensors;
using Device = QLoRA.Runtime.Devices.Device;

namespace QLoRA.Runtime.Layers;

/// <summary>
/// A linear layer with a frozen 4-bit (NF4/FP4) base weight W [out, in] and an optional LoRA slot:
/// y = x Wᵀ + s·(x Aᵀ) Bᵀ. The base weight is decoded inside the GEMM (no dequantized copy is ever materialized);
/// only the adapter is trained.
/// </summary>
public sealed class QuantizedLinear : IDisposable
{
    private readonly Device _device;

    /// <summary>Wraps a device-resident 4-bit weight of shape [out, in].</summary>
    /// <exception cref="ArgumentException">The weight is not 2-D.</exception>
    public QuantizedLinear(Device device, DeviceQuantizedTensor weight)
    {
        if (weight.State.Shape.Count != 2)
        {
            throw new ArgumentException($"A linear weight is [out, in], not [{string.Join(", ", weight.State.Shape)}].", nameof(weight));
        }

        _device = device;
        Weight = weight;
        OutFeatures = checked((int)weight.State.Shape[0]);
        InFeatures = checked((int)weight.State.Shape[1]);
    }

    /// <summary>
    /// Builds the layer from checkpoint weight <paramref name="name"/> of shape [out, in]: a bitsandbytes 4-bit tensor is
    /// uploaded as it is (and must match the declared type and block size when <paramref name="quantizeDense"/> is given);
    /// a dense one is quantized on load with <paramref name="quantizeDense"/> (QLoRA's defaults if null).
    /// </summary>
    /// <exception cref="CheckpointFormatException">Missing, of another shape (both shapes named), or stored with another 4-bit type or block size.</exception>
    public static QuantizedLinear Load(Device device, QLoRA.Core.Weights.IWeightSource source, string name, int inFeatures, int outFeatures, QLoRA.Core.Quantization.QuantizationOptions? quantizeDense = null)
    {
        QLoRA.Core.Weights.WeightInfo info = QLoRA.Core.Weights.WeightSourceExtensions.Require(source, name, outFeatures, inFeatures);
        QLoRA.Core.Quantization.QuantizedTensor tensor = info.QuantType is not null
            ? source.ReadQuantized(name)
            : QLoRA.Core.Quantization.QuantizedTensor.Quantize(source.ReadSingle(name), info.Shape, quantizeDense, name);
        if (info.QuantType is not null && quantizeDense is not null
            && (tensor.State.Type != quantizeDense.Type || tensor.State.BlockSize != quantizeDense.BlockSize))
        {
            // The declared storage is an assertion about the weights: a differently quantized file is an error, not a surprise.
            throw new CheckpointFormatException(source.Location, name,
                $"is stored {tensor.State.Type.ToString().ToLowerInvariant()} (block {tensor.State.BlockSize}) but the model declares {quantizeDense.Type.ToString().ToLowerInvariant()} (block {quantizeDense.BlockSize})");
        }
        var layer = new QuantizedLinear(device, DeviceQuantizedTensor.Upload(device, tensor));
        layer.Bias = Linear.LoadOptionalBias(device, source, name, outFeatures);
        return layer;
    }

    /// <summary>The frozen bias [out], when the checkpoint has one (e.g. Qwen2's q/k/v projections).</summary>
    public DeviceTensor? Bias { get; private set; }

    /// <summary>The frozen 4-bit weight.</summary>
    public DeviceQuantizedTensor Weight { get; }

    /// <summary>Input features.</summary>
    public int InFeatures { get; }

    /// <summary>Output features.</summary>
    public int OutFeatures { get; }

    /// <summary>The LoRA adapter, if attached.</summary>
    public LoraSlot? Lora { get; set; }

    /// <summary>y = x Wᵀ (+ LoRA).</summary>
    /// <param name="x">F32 [tokens, in].</param>
    /// <param name="y">F32 [tokens, out], written.</param>
    public void Forward(DeviceTensor x, DeviceTensor y)
    {
        int tokens = CheckInput(x);
        Weight.Multiply(x, y, transposeWeight: true);
        if (Bias is not null)
        {
            Elementwise.AddBias(y, Bias);
        }

        if (Lora is LoraSlot lora)
        {
            using DeviceTensor xa = DeviceTensor.Allocate(_device, DType.F32, tokens, lora.Rank);
            Gemm.Multiply(x, lora.A, xa, transposeB: true);
            Gemm.Multiply(xa, lora.B, y, transposeB: true, alpha: lora.Scaling, beta: 1f);
        }
    }

    /// <summary>
    /// Backward from dy: accumulates the LoRA gradients (dB += s·dyᵀ(x Aᵀ), dA += s·(dy B)ᵀ x) and, when
    /// <paramref name="dx"/> is given, writes dx = dy W + s·(dy B) A.
    /// </summary>
    public void Backward(DeviceTensor x, DeviceTensor dy, DeviceTensor? dx)
    {
        int tokens = CheckInput(x);
        if (dx is not null)
        {
            Weight.Multiply(dy, dx, transposeWeight: false);
        }

        if (Lora is LoraSlot lora)
        {
            using DeviceTensor xa = DeviceTensor.Allocate(_device, DType.F32, tokens, lora.Rank);
            using DeviceTensor dyB = DeviceTensor.Allocate(_device, DType.F32, tokens, lora.Rank);
            Gemm.Multiply(x, lora.A, xa, transposeB: true);
            Gemm.Multiply(dy, lora.B, dyB);
            Gemm.Multiply(dy, xa, lora.GradB, transposeA: true, alpha: lora.Scaling, beta: 1f);
            Gemm.Multiply(dyB, x, lora.GradA, transposeA: true, alpha: lora.Scaling, beta: 1f);
            if (dx is not null)
            {
                Gemm.Multiply(dyB, lora.A, dx, alpha: lora.Scaling, beta: 1f);
            }
        }
    }

    private int CheckInput(DeviceTensor x)
    {
        if (x.Shape.Count != 2 || x.Shape[1] != InFeatures)
        {
            throw new ArgumentException($"Input has shape [{string.Join(", ", x.Shape)}]; this layer takes [tokens, {InFeatures}].", nameof(x));
        }

        return checked((int)x.Shape[0]);
    }

    /// <summary>Frees the weight and the adapter.</summary>
    public void Dispose()
    {
        Weight.Dispose();
        Bias?.Dispose();
        Lora?.Dispose();
    }
}
