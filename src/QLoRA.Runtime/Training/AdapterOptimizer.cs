using QLoRA.Core;
using QLoRA.Runtime.Engine;
using QLoRA.Runtime.Tensors;

namespace QLoRA.Runtime.Training;

/// <summary>
/// Updates every adapter of a <see cref="LoraParameters"/> from its flat gradient buffer: one update per optimizer step
/// (one launch, or one per page for paged optimizers).
/// </summary>
public abstract class AdapterOptimizer : IDisposable
{
    /// <summary>
    /// Applies step <paramref name="step"/> (1-based) with learning rate <paramref name="learningRate"/> to F32 flat
    /// <paramref name="values"/> from <paramref name="gradients"/> (of the size the optimizer was made for), gradients
    /// multiplied by <paramref name="gradientScale"/> first (clipping).
    /// </summary>
    public abstract void Step(DeviceTensor values, DeviceTensor gradients, int step, double learningRate, float gradientScale);

    /// <summary>Applies a step to an adapter set's flat buffers.</summary>
    public void Step(LoraParameters parameters, int step, double learningRate, float gradientScale) => Step(parameters.Values, parameters.Gradients, step, learningRate, gradientScale);

    /// <summary>Bytes of optimizer state held in device memory.</summary>
    public abstract long DeviceStateBytes { get; }

    /// <summary>Bytes of optimizer state in all (device and host).</summary>
    public abstract long StateBytes { get; }

    /// <summary>The state as named tensors, exactly (for checkpoints).</summary>
    public abstract IReadOnlyDictionary<string, TensorData> ReadState();

    /// <summary>Restores state read by <see cref="ReadState"/> (from a checkpoint).</summary>
    /// <exception cref="ArgumentException">A tensor is missing or does not match the parameters' size.</exception>
    public abstract void WriteState(IReadOnlyDictionary<string, TensorData> state);

    /// <summary>The named tensor of a saved state, checked against the expected dtype and length.</summary>
    /// <exception cref="ArgumentException">Missing or of another dtype or size.</exception>
    protected static TensorData Expect(IReadOnlyDictionary<string, TensorData> state, string name, DType dtype, long count)
    {
        if (!state.TryGetValue(name, out TensorData? tensor) || tensor.Dtype != dtype || tensor.ElementCount != count)
        {
            throw new ArgumentException($"The optimizer state needs '{name}' ({dtype}, {count} elements); got {(tensor is null ? "none" : $"{tensor.Dtype} {tensor.ShapeText}")}.", nameof(state));
        }

        return tensor;
    }

    /// <summary>Frees the state.</summary>
    public abstract void Dispose();
}
