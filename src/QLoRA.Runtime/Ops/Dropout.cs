using ILGPU;
using ILGPU.Runtime;
using QLoRA.Runtime.Kernels;
using QLoRA.Runtime.Tensors;
using Device = QLoRA.Runtime.Devices.Device;

namespace QLoRA.Runtime.Ops;

/// <summary>
/// Inverted dropout (kept values scaled by 1/(1 − p)) whose mask is a function of a seed and the element index: the
/// same seed gives the same mask, so a backward pass applies it again to the gradient instead of storing it.
/// </summary>
public static class Dropout
{
    /// <summary>y = mask(seed) ⊙ x / (1 − p); y may alias x. With p = 0, y = x.</summary>
    /// <param name="x">A tensor of a compute dtype (F32, BF16, F16).</param>
    /// <param name="y">Same shape and dtype, written.</param>
    /// <param name="probability">Drop probability p in [0, 1).</param>
    /// <param name="seed">Mask seed; the backward of a dropout uses the forward's seed.</param>
    /// <exception cref="ArgumentOutOfRangeException">p is outside [0, 1).</exception>
    /// <exception cref="ArgumentException">Shapes or dtypes disagree.</exception>
    public static void Apply(DeviceTensor x, DeviceTensor y, double probability, uint seed)
    {
        if (!(probability >= 0 && probability < 1))
        {
            throw new ArgumentOutOfRangeException(nameof(probability), probability, "Dropout probability must be in [0, 1).");
        }

        Shapes.Require(y, x.Dtype, x.Shape, nameof(y));
        uint threshold = (uint)Math.Min(uint.MaxValue, Math.Round(probability * 4294967296.0));
        if (Cpu.CpuOps.Runs(x))
        {
            Cpu.CpuRowOps.Dropout(x, y, threshold, (float)(1 / (1 - probability)), seed);
            return;
        }

        ComputeDispatch.Run(x, new ApplyLaunch(x, y, threshold, (float)(1 / (1 - probability)), seed), nameof(x));
    }

    private readonly record struct ApplyLaunch(DeviceTensor X, DeviceTensor Y, uint Threshold, float Scale, uint Seed) : IComputeLaunch
    {
        public void Run<T, TE>()
            where T : unmanaged
            where TE : struct, IElement<T>
        {
            Device device = X.Device;
            var kernel = device.Kernel(static a => a.LoadKernel<ArrayView<T>, ArrayView<T>, long, uint, float, uint>(DropoutKernels.Apply<T, TE>));
            kernel(device.Stream, device.GridStride, X.View<T>(), Y.View<T>(), X.ElementCount, Threshold, Scale, Seed);
        }
    }
}
