using ILGPU;
using ILGPU.Runtime;
using QLoRA.Core;
using QLoRA.Runtime.Kernels;
using QLoRA.Runtime.Tensors;
using Device = QLoRA.Runtime.Devices.Device;

namespace QLoRA.Runtime.Ops;

/// <summary>SwiGLU (silu(gate) ⊙ up) forward and backward on float32 device tensors of equal shape.</summary>
public static class SwiGlu
{
    /// <summary>y = silu(gate) ⊙ up.</summary>
    /// <exception cref="ArgumentException">Shapes or dtypes disagree.</exception>
    public static void Forward(DeviceTensor gate, DeviceTensor up, DeviceTensor y)
    {
        Shapes.Require(gate, DType.F32, gate.Shape, nameof(gate));
        Shapes.Require(up, DType.F32, gate.Shape, nameof(up));
        Shapes.Require(y, DType.F32, gate.Shape, nameof(y));
        Device device = gate.Device;
        var kernel = device.Kernel("swiglu.forward", a => a.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, long>(SwiGluKernels.Forward));
        kernel(device.GridStride, gate.View<float>(), up.View<float>(), y.View<float>(), gate.ElementCount);
    }

    /// <summary>Gradients of gate and up from dy.</summary>
    /// <exception cref="ArgumentException">Shapes or dtypes disagree.</exception>
    public static void Backward(DeviceTensor gate, DeviceTensor up, DeviceTensor dy, DeviceTensor dGate, DeviceTensor dUp)
    {
        foreach ((DeviceTensor t, string name) in new[] { (up, nameof(up)), (dy, nameof(dy)), (dGate, nameof(dGate)), (dUp, nameof(dUp)) })
        {
            Shapes.Require(t, DType.F32, gate.Shape, name);
        }

        Device device = gate.Device;
        var kernel = device.Kernel("swiglu.backward", a => a.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, long>(SwiGluKernels.Backward));
        kernel(device.GridStride, gate.View<float>(), up.View<float>(), dy.View<float>(), dGate.View<float>(), dUp.View<float>(), gate.ElementCount);
    }
}
