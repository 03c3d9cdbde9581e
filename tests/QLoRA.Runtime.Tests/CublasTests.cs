using QLoRA.Core;
using QLoRA.Runtime.Devices;
using QLoRA.Runtime.Native;
using QLoRA.Runtime.Ops;
using QLoRA.Runtime.Tensors;

namespace QLoRA.Runtime.Tests;

/// <summary>cuBLAS interop: absent on the CPU accelerator; on a CUDA machine it must agree with the ILGPU GEMM.</summary>
public class CublasTests
{
    [Fact]
    public void IsUnavailableOnTheCpuAccelerator()
    {
        using Device device = Device.Cpu();
        Assert.Null(Cublas.TryCreate(device));
        Assert.Null(device.Blas);
        using DeviceTensor a = DeviceTensor.Allocate(device, DType.F32, 2, 2);
        Assert.Contains("cuBLAS is not loaded", Assert.Throws<ArgumentException>(() => Gemm.Multiply(a, a, a, path: GemmPath.Cublas)).Message);
    }

    [Theory]
    [InlineData(false, true)]
    [InlineData(true, false)]
    [InlineData(false, false)]
    public void AgreesWithTheIlgpuGemmOnCuda(bool transposeA, bool transposeB)
    {
        using Device device = Device.Best();
        using Cublas? cublas = Cublas.TryCreate(device);
        if (cublas is null)
        {
            Assert.Skip("needs a CUDA device with libcublas (run the test executable on a GPU machine)");
        }

        const int m = 67, n = 45, k = 130;
        var rng = new Random(1);
        float[] a = [.. Enumerable.Range(0, m * k).Select(_ => (float)(rng.NextDouble() - 0.5))];
        float[] b = [.. Enumerable.Range(0, k * n).Select(_ => (float)(rng.NextDouble() - 0.5))];
        using DeviceTensor ta = DeviceTensor.FromHost<float>(device, a, DType.F32, transposeA ? [k, m] : [m, k]);
        using DeviceTensor tb = DeviceTensor.FromHost<float>(device, b, DType.F32, transposeB ? [n, k] : [k, n]);
        using DeviceTensor ours = DeviceTensor.Allocate(device, DType.F32, m, n);
        using DeviceTensor theirs = DeviceTensor.Allocate(device, DType.F32, m, n);
        Gemm.Multiply(ta, tb, ours, transposeA, transposeB, path: GemmPath.Portable);
        cublas.Gemm(ta, tb, theirs, transposeA, transposeB);
        float[] x = ours.ToHost<float>(), y = theirs.ToHost<float>();
        for (int i = 0; i < x.Length; i++)
        {
            Assert.True(Math.Abs(x[i] - y[i]) <= 1e-4 * (Math.Abs(x[i]) + 1), $"C[{i}] ILGPU {x[i]} vs cuBLAS {y[i]}");
        }
    }

    [Fact]
    public void DeterministicModeKeepsAutoOnTheRuntimesOwnKernelsOnCuda()
    {
        using Device device = Device.Best();
        if (device.Blas is null)
        {
            Assert.Skip("needs a CUDA device with libcublas (run the test executable on a GPU machine)");
        }

        device.Deterministic = true;
        float[] a = Narrow.Random(300 * 200, 1, DType.BF16), b = Narrow.Random(150 * 200, 2, DType.BF16);
        using DeviceTensor ta = DeviceTensor.FromSingle(device, a, DType.BF16, 300, 200), tb = DeviceTensor.FromSingle(device, b, DType.BF16, 150, 200);
        using DeviceTensor auto = DeviceTensor.Allocate(device, DType.F32, 300, 150), own = DeviceTensor.Allocate(device, DType.F32, 300, 150);
        Gemm.Multiply(ta, tb, auto, transposeB: true);
        Gemm.Multiply(ta, tb, own, transposeB: true, path: device.HasTensorCoreMma ? GemmPath.TensorCore : GemmPath.Portable);
        Assert.Equal(own.ToHost<float>().Select(BitConverter.SingleToUInt32Bits), auto.ToHost<float>().Select(BitConverter.SingleToUInt32Bits));
    }
}
