using ILGPU;
using ILGPU.Runtime;
using QLoRA.Core;
using QLoRA.Runtime.Kernels;
using QLoRA.Runtime.Tensors;
using Device = QLoRA.Runtime.Devices.Device;

namespace QLoRA.Runtime.Ops;

/// <summary>
/// C = α·op(A)·op(B) + β·C on float32 row-major matrices, with the transposes the linear layers need:
/// forward y = x·Wᵀ (<c>transposeB</c>), input gradient dx = dy·W, weight gradient dW = dyᵀ·x (<c>transposeA</c>).
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
    /// <exception cref="ArgumentException">Inner dimensions or C's shape disagree (both shapes are named).</exception>
    public static void Multiply(DeviceTensor a, DeviceTensor b, DeviceTensor c, bool transposeA = false, bool transposeB = false, float alpha = 1f, float beta = 0f)
    {
        foreach ((DeviceTensor t, string name) in new[] { (a, nameof(a)), (b, nameof(b)), (c, nameof(c)) })
        {
            if (t.Shape.Count != 2 || t.Dtype != DType.F32)
            {
                throw new ArgumentException($"{name} must be a 2-D F32 matrix, not {t.Dtype} [{string.Join(", ", t.Shape)}].", name);
            }
        }

        int m = checked((int)(transposeA ? a.Shape[1] : a.Shape[0]));
        int k = checked((int)(transposeA ? a.Shape[0] : a.Shape[1]));
        int kb = checked((int)(transposeB ? b.Shape[1] : b.Shape[0]));
        int n = checked((int)(transposeB ? b.Shape[0] : b.Shape[1]));
        if (k != kb)
        {
            throw new ArgumentException($"Inner dimensions differ: op(A) is [{m}, {k}] and op(B) is [{kb}, {n}].", nameof(b));
        }

        Shapes.Require(c, DType.F32, [m, n], nameof(c));
        var shape = new GemmShape(m, n, k, transposeA ? 1 : 0, transposeB ? 1 : 0, checked((int)a.Shape[1]), checked((int)b.Shape[1]), n, alpha, beta);
        Device device = a.Device;
        var kernel = device.Kernel("gemm.f32", acc => acc.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, GemmShape>(GemmKernels.Gemm));
        kernel(device.GridStride, a.View<float>(), b.View<float>(), c.View<float>(), shape);
    }
}
