using QLoRA.Core;
using QLoRA.Core.Quantization;
using QLoRA.Core.Weights;
using QLoRA.Runtime.Ops;
using QLoRA.Runtime.Tensors;
using Device = QLoRA.Runtime.Devices.Device;

namespace QLoRA.Runtime.Layers;

/// <summary>
/// A linear layer with a frozen base weight W [out, in] — 4-bit (NF4/FP4), decoded inside the GEMM with no dequantized
/// copy ever materialized, or, loaded with <see cref="QLoRA.Modeling.LoadOptions.KeepProjectionsDense"/>, dense in the
/// compute dtype (plain LoRA on a bf16 base, bf16 inference, parity checks) — and an optional LoRA slot:
/// y = x Wᵀ + s·(x Aᵀ) Bᵀ. Only the adapter is trained.
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

    /// <summary>Wraps a dense device weight [out, in] of a compute dtype (kept dense: no quantization).</summary>
    /// <exception cref="ArgumentException">The weight is not 2-D.</exception>
    public QuantizedLinear(Device device, DeviceTensor denseWeight)
    {
        if (denseWeight.Shape.Count != 2)
        {
            throw new ArgumentException($"A linear weight is [out, in], not [{string.Join(", ", denseWeight.Shape)}].", nameof(denseWeight));
        }

        _device = device;
        DenseWeight = denseWeight;
        OutFeatures = checked((int)denseWeight.Shape[0]);
        InFeatures = checked((int)denseWeight.Shape[1]);
    }

    /// <summary>
    /// Builds the layer from checkpoint weight <paramref name="name"/> of shape [out, in]: a bitsandbytes 4-bit tensor is
    /// uploaded as it is (and must match the declared type and block size when <paramref name="quantizeDense"/> is given);
    /// a dense one is quantized on load with <paramref name="quantizeDense"/> (QLoRA's defaults if null).
    /// </summary>
    /// <exception cref="CheckpointFormatException">Missing, of another shape (both shapes named), or stored with another 4-bit type or block size.</exception>
    public static QuantizedLinear Load(Device device, IWeightSource source, string name, int inFeatures, int outFeatures, QuantizationOptions? quantizeDense = null, QLoRA.Modeling.LoadOptions? options = null)
    {
        WeightInfo info = WeightSourceExtensions.Require(source, name, outFeatures, inFeatures);
        QuantizedLinear layer;
        if (options?.KeepProjectionsDense == true)
        {
            // Dense in the compute dtype: a 4-bit checkpoint is dequantized once (bitsandbytes' decode), a dense one kept.
            float[] dense = info.QuantType is not null ? source.ReadQuantized(name).DequantizeToSingle() : source.ReadSingle(name);
            layer = new QuantizedLinear(device, DeviceTensor.FromSingle(device, dense, device.ComputeDtype, outFeatures, inFeatures));
        }
        else
        {
            if (options?.QuantizeDenseAs is QuantizationOptions requested)
            {
                // The caller's choice for dense weights; a 4-bit checkpoint loads as stored, without the declared check.
                quantizeDense = info.QuantType is null ? requested : null;
            }

            QuantizedTensor tensor = info.QuantType is not null
                ? source.ReadQuantized(name)
                : QuantizedTensor.Quantize(source.ReadSingle(name), info.Shape, quantizeDense, name);
            if (info.QuantType is not null && quantizeDense is not null
                && (tensor.State.Type != quantizeDense.Type || tensor.State.BlockSize != quantizeDense.BlockSize))
            {
                // The declared storage is an assertion about the weights: a differently quantized file is an error, not a surprise.
                throw new CheckpointFormatException(source.Location, name,
                    $"is stored {tensor.State.Type.ToString().ToLowerInvariant()} (block {tensor.State.BlockSize}) but the model declares {quantizeDense.Type.ToString().ToLowerInvariant()} (block {quantizeDense.BlockSize})");
            }

            layer = new QuantizedLinear(device, DeviceQuantizedTensor.Upload(device, tensor));
        }

        layer.Bias = Linear.LoadOptionalBias(device, source, name, outFeatures);
        return layer;
    }

    /// <summary>The frozen bias [out], when the checkpoint has one (e.g. Qwen2's q/k/v projections).</summary>
    public DeviceTensor? Bias { get; private set; }

    /// <summary>The frozen 4-bit weight, or null when the layer is dense (<see cref="DenseWeight"/>).</summary>
    public DeviceQuantizedTensor? Weight { get; private set; }

    /// <summary>Replaces the 4-bit base with <paramref name="weight"/> of the same shape (LoftQ's adjusted base); the old one is freed.</summary>
    /// <exception cref="ArgumentException">The shape differs, or the layer is dense.</exception>
    public void ReplaceBase(DeviceQuantizedTensor weight)
    {
        if (Weight is null || !weight.State.Shape.SequenceEqual(Weight.State.Shape))
        {
            throw new ArgumentException($"The new base must be a 4-bit [{OutFeatures}, {InFeatures}] weight of a 4-bit layer.", nameof(weight));
        }

        Weight.Dispose();
        Weight = weight;
    }

    /// <summary>The frozen dense weight [out, in] in the compute dtype, or null when the layer is 4-bit.</summary>
    public DeviceTensor? DenseWeight { get; }

    /// <summary>Device bytes of the frozen weight (4-bit codes and absmax, or the dense tensor), without the bias.</summary>
    public long WeightBytes => DenseWeight?.ByteLength
        ?? (Weight!.State.PackedBytes + (Weight.ElementCount / Weight.State.BlockSize * (Weight.State.IsDoubleQuantized ? 1 : 4)));

    /// <summary>Input features.</summary>
    public int InFeatures { get; }

    /// <summary>Output features.</summary>
    public int OutFeatures { get; }

    /// <summary>The LoRA adapter, if attached.</summary>
    public LoraSlot? Lora { get; set; }

    /// <summary>y = x Wᵀ (+ bias) (+ s·(dropout(x) Aᵀ) Bᵀ).</summary>
    /// <param name="x">[tokens, in] of a compute dtype (F32, BF16, F16).</param>
    /// <param name="y">[tokens, out] of x's dtype, written.</param>
    /// <param name="training">Apply the adapter's dropout (with <see cref="LoraSlot.DropoutSeed"/>).</param>
    public void Forward(DeviceTensor x, DeviceTensor y, bool training = false)
    {
        ForwardBase(x, y);
        if (Lora is LoraSlot lora)
        {
            AddAdapter(lora, x, y, training);
        }
    }

    /// <summary>y = x Wᵀ (+ bias): the frozen base alone, whatever adapter is attached.</summary>
    internal void ForwardBase(DeviceTensor x, DeviceTensor y)
    {
        int tokens = CheckInput(x);
        if (DenseWeight is not null)
        {
            Gemm.Multiply(x, DenseWeight, y, transposeB: true);
        }
        else if (tokens <= 8 && InFeatures % 32 == 0)
        {
            Weight!.Gemv(x, y); // decode: every packed byte read once for all rows
        }
        else
        {
            Weight!.Multiply(x, y, transposeWeight: true);
        }

        if (Bias is not null)
        {
            Elementwise.AddBias(y, Bias);
        }
    }

    /// <summary>y += s·(dropout(x) Aᵀ) Bᵀ for <paramref name="lora"/> (this layer's or another adapter of the same shape).</summary>
    internal void AddAdapter(LoraSlot lora, DeviceTensor x, DeviceTensor y, bool training = false)
    {
        int tokens = CheckInput(x);
        using var operands = new LoraOperands(lora, x, training);
        using DeviceTensor xa = DeviceTensor.Allocate(_device, x.Dtype, tokens, lora.Rank);
        Gemm.Multiply(operands.Input, operands.A, xa, transposeB: true);
        Gemm.Multiply(xa, operands.B, y, transposeB: true, alpha: lora.Scaling, beta: 1f);
    }

    /// <summary>
    /// Backward from dy: accumulates the LoRA gradients (dB += s·dyᵀ(x̃ Aᵀ), dA += s·(dy B)ᵀ x̃, with x̃ = dropout(x)) in
    /// float32 and, when <paramref name="dx"/> is given, writes dx = dy W + dropoutᵀ(s·(dy B) A).
    /// </summary>
    /// <param name="x">The forward's input.</param>
    /// <param name="dy">[tokens, out] of x's dtype.</param>
    /// <param name="dx">[tokens, in] of x's dtype, written; null when the input needs no gradient.</param>
    /// <param name="training">Whether the forward applied dropout (the same seed must still be set).</param>
    public void Backward(DeviceTensor x, DeviceTensor dy, DeviceTensor? dx, bool training = false)
    {
        int tokens = CheckInput(x);
        if (dx is not null && DenseWeight is not null)
        {
            Gemm.Multiply(dy, DenseWeight, dx);
        }
        else if (dx is not null)
        {
            Weight!.Multiply(dy, dx, transposeWeight: false);
        }

        if (Lora is LoraSlot lora)
        {
            using var operands = new LoraOperands(lora, x, training);
            using DeviceTensor xa = DeviceTensor.Allocate(_device, x.Dtype, tokens, lora.Rank);
            using DeviceTensor dyB = DeviceTensor.Allocate(_device, x.Dtype, tokens, lora.Rank);
            Gemm.Multiply(operands.Input, operands.A, xa, transposeB: true);
            Gemm.Multiply(dy, operands.B, dyB);
            Gemm.Multiply(dy, xa, lora.GradB, transposeA: true, alpha: lora.Scaling, beta: 1f);
            Gemm.Multiply(dyB, operands.Input, lora.GradA, transposeA: true, alpha: lora.Scaling, beta: 1f);
            if (dx is null)
            {
                return;
            }

            if (operands.Dropped)
            {
                // The adapter saw dropout(x): its input gradient goes back through the same mask.
                using DeviceTensor dxLora = DeviceTensor.Allocate(_device, x.Dtype, tokens, InFeatures);
                Gemm.Multiply(dyB, operands.A, dxLora, alpha: lora.Scaling);
                Ops.Dropout.Apply(dxLora, dxLora, lora.Dropout, lora.DropoutSeed);
                Elementwise.Add(dx, dxLora, dx);
            }
            else
            {
                Gemm.Multiply(dyB, operands.A, dx, alpha: lora.Scaling, beta: 1f);
            }
        }
    }

    /// <summary>The adapter's operands for one pass: the (dropped-out) input and A, B in the input's dtype.</summary>
    private readonly struct LoraOperands : IDisposable
    {
        private readonly DeviceTensor? _dropped, _a, _b;

        public LoraOperands(LoraSlot lora, DeviceTensor x, bool training)
        {
            if (training && lora.Dropout > 0)
            {
                _dropped = DeviceTensor.Allocate(x.Device, x.Dtype, [.. x.Shape]);
                Ops.Dropout.Apply(x, _dropped, lora.Dropout, lora.DropoutSeed);
            }

            if (x.Dtype != DType.F32 && lora.ComputeA?.Dtype == x.Dtype && lora.ComputeB?.Dtype == x.Dtype)
            {
                // Rounded once per optimizer step by the flat buffers' owner, not per call.
                A = lora.ComputeA;
                B = lora.ComputeB;
            }
            else if (x.Dtype != DType.F32)
            {
                _a = Elementwise.ConvertTo(lora.A, x.Dtype);
                _b = Elementwise.ConvertTo(lora.B, x.Dtype);
                A = _a;
                B = _b;
            }
            else
            {
                A = lora.A;
                B = lora.B;
            }

            Input = _dropped ?? x;
        }

        public DeviceTensor Input { get; }

        public DeviceTensor A { get; }

        public DeviceTensor B { get; }

        public bool Dropped => _dropped is not null;

        public void Dispose()
        {
            _dropped?.Dispose();
            _a?.Dispose();
            _b?.Dispose();
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
        Weight?.Dispose();
        DenseWeight?.Dispose();
        Bias?.Dispose();
        Lora?.Dispose();
    }
}
