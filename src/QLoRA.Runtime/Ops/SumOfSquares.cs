using ILGPU;
using ILGPU.Runtime;
using QLoRA.Core;
using QLoRA.Runtime.Kernels;
using QLoRA.Runtime.Tensors;
using Device = QLoRA.Runtime.Devices.Device;

namespace QLoRA.Runtime.Ops;

/// <summary>Σ x² of a float32 tensor, as partial sums left on the device (global gradient norms, non-finite checks).</summary>
public static class SumOfSquares
{
    /// <summary>Partials per call: lane p sums the elements p, p + lanes, … in order.</summary>
    public const int Lanes = 16384;

    /// <summary>Writes the <see cref="Lanes"/> partial sums of x² into <paramref name="partials"/> (no synchronization).</summary>
    /// <param name="x">F32, any shape.</param>
    /// <param name="partials">F32 [<see cref="Lanes"/>], written.</param>
    /// <exception cref="ArgumentException">A dtype or shape is wrong.</exception>
    public static void Partials(DeviceTensor x, DeviceTensor partials)
    {
        Shapes.Require(x, DType.F32, x.Shape, nameof(x));
        Shapes.Require(partials, DType.F32, [Lanes], nameof(partials));
        Device device = x.Device;
        if (Cpu.CpuOps.Runs(x))
        {
            Cpu.CpuRowOps.SumOfSquaresPartials(x, partials, Lanes);
            return;
        }

        var kernel = device.Kernel(static a => a.LoadKernel<ArrayView<float>, ArrayView<float>, long, int>(ReductionKernels.SumOfSquares));
        kernel(device.Stream, device.GridStride, x.View<float>(), partials.View<float>(), x.ElementCount, Lanes);
    }

    /// <summary>Finishes partials read from the device: their sum in double, in lane order.</summary>
    public static double Total(ReadOnlySpan<float> partials)
    {
        double sum = 0;
        foreach (float p in partials)
        {
            sum += p;
        }

        return sum;
    }
}
