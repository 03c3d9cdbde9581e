using ILGPU;
using ILGPU.Runtime;
using QLoRA.Core;
using QLoRA.Runtime.Kernels;
using QLoRA.Runtime.Tensors;
using Device = QLoRA.Runtime.Devices.Device;

namespace QLoRA.Runtime.Ops;

/// <summary>Rotary position embedding of queries or keys, driven by explicit position ids (packed sequences restart at 0).</summary>
public static class Rope
{
    /// <summary>Rotates <paramref name="x"/> [tokens, heads, headDim] in place by each token's position.</summary>
    /// <param name="x">[tokens, heads, headDim], F32, BF16 or F16 (angles and rotation in float32).</param>
    /// <param name="positions">I32 [tokens].</param>
    /// <param name="invFreq">F32 [headDim / 2], from <see cref="RopeFrequencies.Compute"/>.</param>
    /// <exception cref="ArgumentException">Shapes or dtypes disagree.</exception>
    public static void Forward(DeviceTensor x, DeviceTensor positions, DeviceTensor invFreq) => Run(x, positions, invFreq, 1f);

    /// <summary>The gradient through the rotation: rotates <paramref name="grad"/> in place by minus each position.</summary>
    public static void Backward(DeviceTensor grad, DeviceTensor positions, DeviceTensor invFreq) => Run(grad, positions, invFreq, -1f);

    private static void Run(DeviceTensor x, DeviceTensor positions, DeviceTensor invFreq, float direction)
    {
        if (x.Shape.Count != 3 || x.Shape[2] % 2 != 0)
        {
            throw new ArgumentException($"x must be [tokens, heads, headDim] with an even headDim, not [{string.Join(", ", x.Shape)}].", nameof(x));
        }

        int tokens = checked((int)x.Shape[0]), heads = checked((int)x.Shape[1]), headDim = checked((int)x.Shape[2]);
        Shapes.Require(positions, DType.I32, [tokens], nameof(positions));
        Shapes.Require(invFreq, DType.F32, [headDim / 2], nameof(invFreq));
        if (Cpu.CpuOps.Runs(x))
        {
            Cpu.CpuRowOps.Rope(x, positions, invFreq, tokens, heads, headDim, direction);
            return;
        }

        ComputeDispatch.Run(x, new RotateLaunch(x, positions, invFreq, tokens, heads, headDim, direction), nameof(x));
    }

    private readonly record struct RotateLaunch(DeviceTensor X, DeviceTensor Positions, DeviceTensor InvFreq, int Tokens, int Heads, int HeadDim, float Direction) : IComputeLaunch
    {
        public void Run<T, TE>()
            where T : unmanaged
            where TE : struct, IElement<T>
        {
            Device device = X.Device;
            var kernel = device.Kernel(static a => a.LoadKernel<ArrayView<T>, ArrayView<int>, ArrayView<float>, int, int, int, float>(RopeKernels.Rotate<T, TE>));
            kernel(device.Stream, device.GridStride, X.View<T>(), Positions.View<int>(), InvFreq.View<float>(), Tokens, Heads, HeadDim, Direction);
        }
    }
}
