using QLoRA.Runtime.Engine;

namespace QLoRA.Runtime.Training;

/// <summary>
/// Updates every adapter of a <see cref="LoraParameters"/> from its flat gradient buffer: one update per optimizer step
/// (one launch, or one per page for paged optimizers).
/// </summary>
public abstract class AdapterOptimizer : IDisposable
{
    /// <summary>Applies step <paramref name="step"/> (1-based) with learning rate <paramref name="learningRate"/>; gradients are multiplied by <paramref name="gradientScale"/> first (clipping).</summary>
    public abstract void Step(LoraParameters parameters, int step, double learningRate, float gradientScale);

    /// <summary>Bytes of optimizer state held in device memory.</summary>
    public abstract long DeviceStateBytes { get; }

    /// <summary>Bytes of optimizer state in all (device and host).</summary>
    public abstract long StateBytes { get; }

    /// <summary>The state as float32 arrays (first moment, second moment), for checkpoints and tests.</summary>
    public abstract (float[] M, float[] V) ReadState();

    /// <summary>Restores state read by <see cref="ReadState"/> (from a checkpoint).</summary>
    /// <exception cref="ArgumentException">The arrays do not match the parameters' size.</exception>
    public abstract void WriteState(float[] m, float[] v);

    /// <summary>Frees the state.</summary>
    public abstract void Dispose();
}
