using QLoRA.Core;
using QLoRA.Runtime.Kernels;
using QLoRA.Runtime.Tensors;

namespace QLoRA.Runtime.Ops;

/// <summary>A kernel launch written once for every compute dtype; <see cref="ComputeDispatch"/> picks the instantiation.</summary>
internal interface IComputeLaunch
{
    void Run<T, TE>()
        where T : unmanaged
        where TE : struct, IElement<T>;
}

/// <summary>Maps a tensor's dtype (F32, BF16, F16) to the element type its kernels are specialized for.</summary>
internal static class ComputeDispatch
{
    /// <summary>The compute dtypes: activations, gradients of activations and dense frozen weights may use any of them.</summary>
    public static bool IsCompute(DType dtype) => dtype is DType.F32 or DType.BF16 or DType.F16;

    /// <summary>Runs <paramref name="launch"/> specialized for <paramref name="tensor"/>'s dtype.</summary>
    /// <exception cref="ArgumentException">The dtype is not a compute dtype.</exception>
    public static void Run<TLaunch>(DeviceTensor tensor, TLaunch launch, string name)
        where TLaunch : IComputeLaunch
    {
        switch (tensor.Dtype)
        {
            case DType.F32:
                launch.Run<float, F32Element>();
                break;
            case DType.BF16:
                launch.Run<ushort, Bf16Element>();
                break;
            case DType.F16:
                launch.Run<ushort, F16Element>();
                break;
            default:
                throw new ArgumentException($"{name} is {tensor.Dtype}; kernels compute in F32, BF16 or F16.", name);
        }
    }
}
