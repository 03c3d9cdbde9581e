using ILGPU;
using ILGPU.Runtime;
using QLoRA.Core;
using QLoRA.Runtime.Kernels;
using QLoRA.Runtime.Tensors;
using Device = QLoRA.Runtime.Devices.Device;

namespace QLoRA.Runtime.Ops;

/// <summary>RMSNorm forward and backward on float32 device tensors.</summary>
public static class RmsNorm
{
    /// <summary>y = w ⊙ x / rms(x); saves 1/rms per row in <paramref name="inverseRms"/>.</summary>
    /// <param name="x">[rows, dim] F32.</param>
    /// <param name="weight">[dim] F32.</param>
    /// <param name="y">[rows, dim] F32, written.</param>
    /// <param name="inverseRms">[rows] F32, written.</param>
    /// <param name="eps">rms_norm_eps.</param>
    /// <exception cref="ArgumentException">Shapes or dtypes disagree.</exception>
    public static void Forward(DeviceTensor x, DeviceTensor weight, DeviceTensor y, DeviceTensor inverseRms, float eps)
    {
        (int rows, int dim) = Check(x, weight, y, inverseRms);
        Device device = x.Device;
        var kernel = device.Kernel("rmsnorm.forward", a => a.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, float>(RmsNormKernels.Forward));
        kernel(device.GridStride, x.View<float>(), weight.View<float>(), y.View<float>(), inverseRms.View<float>(), rows, dim, eps);
    }

    /// <summary>Gradients of the input and the weight from dy and the forward's saved 1/rms.</summary>
    /// <exception cref="ArgumentException">Shapes or dtypes disagree.</exception>
    public static void Backward(DeviceTensor x, DeviceTensor weight, DeviceTensor dy, DeviceTensor inverseRms, DeviceTensor dx, DeviceTensor dWeight)
    {
        (int rows, int dim) = Check(x, weight, dy, inverseRms);
        Shapes.Require(dx, DType.F32, x.Shape, nameof(dx));
        Shapes.Require(dWeight, DType.F32, weight.Shape, nameof(dWeight));
        Device device = x.Device;
        var input = device.Kernel("rmsnorm.backward.input", a => a.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int>(RmsNormKernels.BackwardInput));
        input(device.GridStride, x.View<float>(), weight.View<float>(), dy.View<float>(), inverseRms.View<float>(), dx.View<float>(), rows, dim);
        var weights = device.Kernel("rmsnorm.backward.weight", a => a.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int>(RmsNormKernels.BackwardWeight));
        weights(device.GridStride, x.View<float>(), dy.View<float>(), inverseRms.View<float>(), dWeight.View<float>(), rows, dim);
    }

    private static (int Rows, int Dim) Check(DeviceTensor x, DeviceTensor weight, DeviceTensor y, DeviceTensor inverseRms)
    {
        if (x.Shape.Count != 2)
        {
            throw new ArgumentException($"x must be [rows, dim], not [{string.Join(", ", x.Shape)}].", nameof(x));
        }

        int rows = checked((int)x.Shape[0]);
        int dim = checked((int)x.Shape[1]);
        Shapes.Require(x, DType.F32, x.Shape, nameof(x));
        Shapes.Require(weight, DType.F32, [dim], nameof(weight));
        Shapes.Require(y, DType.F32, x.Shape, nameof(y));
        Shapes.Require(inverseRms, DType.F32, [rows], nameof(inverseRms));
        return (rows, dim);
    }
}
