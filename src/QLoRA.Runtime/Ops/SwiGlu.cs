using ILGPU;
using ILGPU.Runtime;
using QLoRA.Core;
using QLoRA.Runtime.Kernels;
using QLoRA.Runtime.Tensors;
using Device = QLoRA.Runtime.Devices.Device;

namespace QLoRA.Runtime.Ops;

/// <summary>SwiGLU (silu(gate) ⊙ up) forward and backward on device tensors of one shape and compute dtype (F32, BF16, F16; float32 arithmetic).</summary>
public static class SwiGlu
{
    /// <summary>y = silu(gate) ⊙ up.</summary>
    /// <exception cref="ArgumentException">Shapes or dtypes disagree.</exception>
    public static void Forward(DeviceTensor gate, DeviceTensor up, DeviceTensor y)
    {
        Shapes.Require(up, gate.Dtype, gate.Shape, nameof(up));
        Shapes.Require(y, gate.Dtype, gate.Shape, nameof(y));
        if (Cpu.CpuOps.Runs(gate))
        {
            Cpu.CpuRowOps.SwiGluForward(gate, up, y);
            return;
        }

        ComputeDispatch.Run(gate, new ForwardLaunch(gate, up, y), nameof(gate));
    }

    /// <summary>Gradients of gate and up from dy.</summary>
    /// <exception cref="ArgumentException">Shapes or dtypes disagree.</exception>
    public static void Backward(DeviceTensor gate, DeviceTensor up, DeviceTensor dy, DeviceTensor dGate, DeviceTensor dUp)
    {
        foreach ((DeviceTensor t, string name) in new[] { (up, nameof(up)), (dy, nameof(dy)), (dGate, nameof(dGate)), (dUp, nameof(dUp)) })
        {
            Shapes.Require(t, gate.Dtype, gate.Shape, name);
        }

        if (Cpu.CpuOps.Runs(gate))
        {
            Cpu.CpuRowOps.SwiGluBackward(gate, up, dy, dGate, dUp);
            return;
        }

        ComputeDispatch.Run(gate, new BackwardLaunch(gate, up, dy, dGate, dUp), nameof(gate));
    }

    private readonly record struct ForwardLaunch(DeviceTensor Gate, DeviceTensor Up, DeviceTensor Y) : IComputeLaunch
    {
        public void Run<T, TE>()
            where T : unmanaged
            where TE : struct, IElement<T>
        {
            Device device = Gate.Device;
            var kernel = device.Kernel(static a => a.LoadKernel<ArrayView<T>, ArrayView<T>, ArrayView<T>, long>(SwiGluKernels.Forward<T, TE>));
            kernel(device.Stream, device.GridStride, Gate.View<T>(), Up.View<T>(), Y.View<T>(), Gate.ElementCount);
        }
    }

    private readonly record struct BackwardLaunch(DeviceTensor Gate, DeviceTensor Up, DeviceTensor Dy, DeviceTensor DGate, DeviceTensor DUp) : IComputeLaunch
    {
        public void Run<T, TE>()
            where T : unmanaged
            where TE : struct, IElement<T>
        {
            Device device = Gate.Device;
            var kernel = device.Kernel(static a => a.LoadKernel<ArrayView<T>, ArrayView<T>, ArrayView<T>, ArrayView<T>, ArrayView<T>, long>(SwiGluKernels.Backward<T, TE>));
            kernel(device.Stream, device.GridStride, Gate.View<T>(), Up.View<T>(), Dy.View<T>(), DGate.View<T>(), DUp.View<T>(), Gate.ElementCount);
        }
    }
}
