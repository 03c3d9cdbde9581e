using QLoRA.Runtime.Devices;
using QLoRA.Runtime.Tensors;

namespace QLoRA.Runtime.Cpu;

/// <summary>The Ops entry points' CPU schedules: run in place on the CPU accelerator's host-memory buffers.</summary>
internal static unsafe class CpuOps
{
    /// <summary>True when <paramref name="tensor"/> lives on the CPU accelerator (its buffers are host memory).</summary>
    public static bool Runs(DeviceTensor tensor) => tensor.Device.Kind == DeviceKind.Cpu;

    /// <summary>C = α·op(A)·op(B) + β·C (shapes already checked by the caller).</summary>
    public static void Gemm(DeviceTensor a, DeviceTensor b, DeviceTensor c, bool transposeA, bool transposeB, int m, int n, int k, float alpha, float beta)
    {
        // Kernels queued before this call write what it reads.
        a.Device.Stream.Synchronize();
        var left = new CpuMatrix((void*)a.NativePointer, CpuMatrix.ElementOf(a.Dtype), checked((int)a.Shape[1]), transposeA);
        var right = new CpuMatrix((void*)b.NativePointer, CpuMatrix.ElementOf(b.Dtype), checked((int)b.Shape[1]), transposeB);
        var output = new CpuOutput((void*)c.NativePointer, CpuMatrix.ElementOf(c.Dtype), n);
        CpuGemm.Multiply(left, new DensePanelSource(right), output, m, n, k, alpha, beta);
    }
}
