using ILGPU;
using ILGPU.Runtime;
using QLoRA.Core;
using QLoRA.Runtime.Kernels;
using QLoRA.Runtime.Tensors;
using Device = QLoRA.Runtime.Devices.Device;

namespace QLoRA.Runtime.Ops;

/// <summary>RMSNorm forward and backward: activations of a compute dtype (F32, BF16, F16), weight and statistics in F32.</summary>
public static class RmsNorm
{
    /// <summary>y = w ⊙ x / rms(x); saves 1/rms per row in <paramref name="inverseRms"/>.</summary>
    /// <param name="x">[rows, dim], F32, BF16 or F16.</param>
    /// <param name="weight">[dim] F32.</param>
    /// <param name="y">[rows, dim] of x's dtype, written.</param>
    /// <param name="inverseRms">[rows] F32, written.</param>
    /// <param name="eps">rms_norm_eps.</param>
    /// <exception cref="ArgumentException">Shapes or dtypes disagree.</exception>
    public static void Forward(DeviceTensor x, DeviceTensor weight, DeviceTensor y, DeviceTensor inverseRms, float eps)
    {
        (int rows, int dim) = Check(x, weight, y, inverseRms);
        if (Cpu.CpuOps.Runs(x))
        {
            Cpu.CpuRowOps.RmsNormForward(x, weight, y, inverseRms, rows, dim, eps);
            return;
        }

        ComputeDispatch.Run(x, new ForwardLaunch(x, weight, y, inverseRms, rows, dim, eps), nameof(x));
    }

    /// <summary>Gradients of the input and (when asked) the weight from dy and the forward's saved 1/rms.</summary>
    /// <param name="x">The forward's input [rows, dim].</param>
    /// <param name="weight">[dim] F32.</param>
    /// <param name="dy">[rows, dim] of x's dtype.</param>
    /// <param name="inverseRms">The forward's 1/rms [rows].</param>
    /// <param name="dx">[rows, dim] of x's dtype, written (may alias dy).</param>
    /// <param name="dWeight">F32 [dim]: Σ over rows of dy·x/rms, written — or added to it with <paramref name="accumulate"/>
    /// (a trained norm over accumulated micro-batches); null: the weight is frozen and its gradient not computed.</param>
    /// <param name="accumulate">Add to <paramref name="dWeight"/> instead of overwriting it.</param>
    /// <exception cref="ArgumentException">Shapes or dtypes disagree.</exception>
    public static void Backward(DeviceTensor x, DeviceTensor weight, DeviceTensor dy, DeviceTensor inverseRms, DeviceTensor dx, DeviceTensor? dWeight, bool accumulate = false)
    {
        (int rows, int dim) = Check(x, weight, dy, inverseRms);
        Shapes.Require(dx, x.Dtype, x.Shape, nameof(dx));
        if (dWeight is not null)
        {
            Shapes.Require(dWeight, DType.F32, weight.Shape, nameof(dWeight));
        }

        if (Cpu.CpuOps.Runs(x))
        {
            Cpu.CpuRowOps.RmsNormBackward(x, weight, dy, inverseRms, dx, dWeight, rows, dim, accumulate);
            return;
        }

        ComputeDispatch.Run(x, new BackwardLaunch(x, weight, dy, inverseRms, dx, dWeight, rows, dim, accumulate ? 1 : 0), nameof(x));
    }

    private readonly record struct ForwardLaunch(DeviceTensor X, DeviceTensor Weight, DeviceTensor Y, DeviceTensor InverseRms, int Rows, int Dim, float Eps) : IComputeLaunch
    {
        public void Run<T, TE>()
            where T : unmanaged
            where TE : struct, IElement<T>
        {
            Device device = X.Device;
            var kernel = device.Kernel(static a => a.LoadKernel<ArrayView<T>, ArrayView<float>, ArrayView<T>, ArrayView<float>, int, int, float>(RmsNormKernels.Forward<T, TE>));
            kernel(device.Stream, device.GridStride, X.View<T>(), Weight.View<float>(), Y.View<T>(), InverseRms.View<float>(), Rows, Dim, Eps);
        }
    }

    private readonly record struct BackwardLaunch(DeviceTensor X, DeviceTensor Weight, DeviceTensor Dy, DeviceTensor InverseRms, DeviceTensor Dx, DeviceTensor? DWeight, int Rows, int Dim, int Accumulate) : IComputeLaunch
    {
        public void Run<T, TE>()
            where T : unmanaged
            where TE : struct, IElement<T>
        {
            Device device = X.Device;
            var input = device.Kernel(static a => a.LoadKernel<ArrayView<T>, ArrayView<float>, ArrayView<T>, ArrayView<float>, ArrayView<T>, int, int>(RmsNormKernels.BackwardInput<T, TE>));
            input(device.Stream, device.GridStride, X.View<T>(), Weight.View<float>(), Dy.View<T>(), InverseRms.View<float>(), Dx.View<T>(), Rows, Dim);
            if (DWeight is null)
            {
                return;
            }

            var weights = device.Kernel(static a => a.LoadKernel<ArrayView<T>, ArrayView<T>, ArrayView<float>, ArrayView<float>, int, int, int>(RmsNormKernels.BackwardWeight<T, TE>));
            weights(device.Stream, device.GridStride, X.View<T>(), Dy.View<T>(), InverseRms.View<float>(), DWeight.View<float>(), Rows, Dim, Accumulate);
        }
    }

    private static (int Rows, int Dim) Check(DeviceTensor x, DeviceTensor weight, DeviceTensor y, DeviceTensor inverseRms)
    {
        if (x.Shape.Count != 2)
        {
            throw new ArgumentException($"x must be [rows, dim], not [{string.Join(", ", x.Shape)}].", nameof(x));
        }

        int rows = checked((int)x.Shape[0]);
        int dim = checked((int)x.Shape[1]);
        Shapes.Require(weight, DType.F32, [dim], nameof(weight));
        Shapes.Require(y, x.Dtype, x.Shape, nameof(y));
        Shapes.Require(inverseRms, DType.F32, [rows], nameof(inverseRms));
        return (rows, dim);
    }
}
