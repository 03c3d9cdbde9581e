using ILGPU;
using ILGPU.Runtime;
using QLoRA.Core;
using QLoRA.Runtime.Kernels;
using QLoRA.Runtime.Tensors;
using Device = QLoRA.Runtime.Devices.Device;

namespace QLoRA.Runtime.Ops;

/// <summary>
/// C = α·op(A)·op(B) + β·C on row-major matrices, with the transposes the linear layers need:
/// forward y = x·Wᵀ (<c>transposeB</c>), input gradient dx = dy·W, weight gradient dW = dyᵀ·x (<c>transposeA</c>).
/// A and B share a compute dtype (F32, BF16, F16); C has that dtype or F32 (float32 gradients of bf16 products);
/// products are summed in float32 and C is rounded once.
/// </summary>
public static class Gemm
{
    /// <summary>Computes C = α·op(A)·op(B) + β·C.</summary>
    /// <param name="a">[M, K], or [K, M] when <paramref name="transposeA"/>.</param>
    /// <param name="b">[K, N], or [N, K] when <paramref name="transposeB"/>.</param>
    /// <param name="c">[M, N], overwritten (β = 0) or accumulated into.</param>
    /// <param name="transposeA">Use Aᵀ.</param>
    /// <param name="transposeB">Use Bᵀ.</param>
    /// <param name="alpha">Scale of the product.</param>
    /// <param name="beta">Scale of the existing C.</param>
    /// <param name="path">Which kernel: <see cref="GemmPath.Auto"/> takes cuBLAS, else tensor cores, where they apply, and the
    /// blocked SIMD kernel on the CPU accelerator.</param>
    /// <exception cref="ArgumentException">Inner dimensions or C's shape disagree (both shapes are named), or the dtypes do,
    /// or a forced path cannot run these operands here.</exception>
    public static void Multiply(DeviceTensor a, DeviceTensor b, DeviceTensor c, bool transposeA = false, bool transposeB = false, float alpha = 1f, float beta = 0f, GemmPath path = GemmPath.Auto)
    {
        foreach ((DeviceTensor t, string name) in new[] { (a, nameof(a)), (b, nameof(b)), (c, nameof(c)) })
        {
            if (t.Shape.Count != 2 || !ComputeDispatch.IsCompute(t.Dtype))
            {
                throw new ArgumentException($"{name} must be a 2-D F32, BF16 or F16 matrix, not {t.Dtype} [{string.Join(", ", t.Shape)}].", name);
            }
        }

        if (b.Dtype != a.Dtype || (c.Dtype != a.Dtype && c.Dtype != DType.F32))
        {
            throw new ArgumentException($"A and B must share a dtype and C must have it or be F32; got {a.Dtype}, {b.Dtype} and {c.Dtype}.", nameof(c));
        }

        int m = checked((int)(transposeA ? a.Shape[1] : a.Shape[0]));
        int k = checked((int)(transposeA ? a.Shape[0] : a.Shape[1]));
        int kb = checked((int)(transposeB ? b.Shape[1] : b.Shape[0]));
        int n = checked((int)(transposeB ? b.Shape[0] : b.Shape[1]));
        if (k != kb)
        {
            throw new ArgumentException($"Inner dimensions differ: op(A) is [{m}, {k}] and op(B) is [{kb}, {n}].", nameof(b));
        }

        Shapes.Require(c, c.Dtype, [m, n], nameof(c));
        if (path == GemmPath.Cublas || (path == GemmPath.Auto && !a.Device.Deterministic))
        {
            if (a.Device.Blas is Native.Cublas blas && Native.Cublas.Supports(a, b, c))
            {
                blas.Gemm(a, b, c, transposeA, transposeB, alpha, beta);
                return;
            }

            if (path == GemmPath.Cublas)
            {
                throw new ArgumentException("cuBLAS is not loaded on this device (the CPU accelerator, or no libcublas).", nameof(path));
            }
        }

        if (path == GemmPath.Cpu || (path == GemmPath.Auto && Cpu.CpuOps.Runs(a)))
        {
            if (!Cpu.CpuOps.Runs(a))
            {
                throw new ArgumentException("The blocked SIMD GEMM runs on the CPU accelerator only.", nameof(path));
            }

            Cpu.CpuOps.Gemm(a, b, c, transposeA, transposeB, m, n, k, alpha, beta);
            return;
        }

        bool tensorCoreShape = a.Dtype is DType.BF16 or DType.F16;
        if (path == GemmPath.TensorCore && (!tensorCoreShape || !a.Device.CanHostTensorCoreTiles))
        {
            throw new ArgumentException(tensorCoreShape
                ? "The tensor-core GEMM needs groups of four 32-lane warps, which this accelerator cannot launch."
                : $"The tensor-core GEMM takes BF16 or F16 operands, not {a.Dtype}.", nameof(path));
        }

        if (path == GemmPath.TensorCore || (path == GemmPath.Auto && tensorCoreShape && a.Device.HasTensorCoreMma))
        {
            var mma = new MmaGemmShape(m, n, k, alpha, beta);
            if (a.Dtype == DType.BF16)
            {
                ComputeDispatch.Run(c, new TensorCoreLaunch<Bf16Element>(Dense<Bf16Element>(a, transposeA), Dense<Bf16Element>(b, !transposeB), c, mma), nameof(c));
            }
            else
            {
                ComputeDispatch.Run(c, new TensorCoreLaunch<F16Element>(Dense<F16Element>(a, transposeA), Dense<F16Element>(b, !transposeB), c, mma), nameof(c));
            }

            return;
        }

        var shape = new GemmShape(m, n, k, transposeA ? 1 : 0, transposeB ? 1 : 0, checked((int)a.Shape[1]), checked((int)b.Shape[1]), n, alpha, beta);
        ComputeDispatch.Run(a, new InputLaunch(a, b, c, shape), nameof(a));
    }

    // The mma kernel's operands are A [M, K] and B [N, K]: a stored Aᵀ, or a stored B [K, N], is a transposed operand.
    private readonly record struct TensorCoreLaunch<TE>(DenseOperand<TE> A, DenseOperand<TE> B, DeviceTensor C, MmaGemmShape Shape) : IComputeLaunch
        where TE : struct, IElement<ushort>, IMmaHalf
    {
        public void Run<TC, TCE>()
            where TC : unmanaged
            where TCE : struct, IElement<TC>
        {
            Device device = C.Device;
            var kernel = device.Kernel(static acc => acc.LoadKernel<DenseOperand<TE>, DenseOperand<TE>, ArrayView<TC>, MmaGemmShape>(MmaGemmKernels.Gemm<DenseOperand<TE>, DenseOperand<TE>, TC, TCE, TE>));
            kernel(device.Stream, device.TensorCoreTiles(Shape.M, Shape.N), A, B, C.View<TC>(), Shape);
        }
    }

    /// <summary>A 2-D BF16/F16 tensor as a tensor-core operand: itself, or (<paramref name="transposed"/>) its transpose.</summary>
    internal static DenseOperand<TE> Dense<TE>(DeviceTensor t, bool transposed = false)
        where TE : struct, IElement<ushort>
    {
        ArrayView<ushort> elements = t.View<ushort>();
        // Two 16-bit elements per uint (read only when the row length is even).
        ArrayView<uint> pairs = elements.SubView(0, elements.Length / 2 * 2).Cast<uint>();
        int rows = checked((int)t.Shape[transposed ? 1 : 0]), columns = checked((int)t.Shape[transposed ? 0 : 1]);
        return new DenseOperand<TE>(elements, pairs, rows, columns, transposed ? 1 : 0);
    }

    private readonly record struct InputLaunch(DeviceTensor A, DeviceTensor B, DeviceTensor C, GemmShape Shape) : IComputeLaunch
    {
        public void Run<T, TE>()
            where T : unmanaged
            where TE : struct, IElement<T> => ComputeDispatch.Run(C, new OutputLaunch<T, TE>(A, B, C, Shape), nameof(C));
    }

    private readonly record struct OutputLaunch<T, TE>(DeviceTensor A, DeviceTensor B, DeviceTensor C, GemmShape Shape) : IComputeLaunch
        where T : unmanaged
        where TE : struct, IElement<T>
    {
        public void Run<TC, TCE>()
            where TC : unmanaged
            where TCE : struct, IElement<TC>
        {
            Device device = A.Device;
            var kernel = device.Kernel(static acc => acc.LoadKernel<ArrayView<T>, ArrayView<T>, ArrayView<TC>, GemmShape>(GemmKernels.Gemm<T, TE, TC, TCE>));
            kernel(device.Stream, device.GridStride, A.View<T>(), B.View<T>(), C.View<TC>(), Shape);
        }
    }
}
