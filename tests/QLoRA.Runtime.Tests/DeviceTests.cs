using ILGPU;
using ILGPU.Runtime;
using ILGPU.Runtime.Cuda;
using QLoRA.Runtime.Devices;
using Device = QLoRA.Runtime.Devices.Device;

namespace QLoRA.Runtime.Tests;

public class DeviceTests
{
    private static Action<AcceleratorStream, KernelConfig, ArrayView<T>, long> Fill<T>(Device device)
        where T : unmanaged =>
        device.Kernel(static a => a.LoadKernel<ArrayView<T>, long>(FillKernel));

    private static void FillKernel<T>(ArrayView<T> x, long count)
        where T : unmanaged
    {
        for (long i = Grid.GlobalIndex.X; i < count; i += (long)Grid.DimX * Group.DimX)
        {
            x[i] = default;
        }
    }

    [Fact]
    public void AKernelIsCompiledOncePerDeviceAndInstantiationAndFoundWithoutAStringKey()
    {
        using Device device = Device.Cpu();
        var first = Fill<float>(device);
        Assert.Same(first, Fill<float>(device)); // the same launcher: no recompilation, no per-launch key
        Assert.NotSame((Delegate)first, Fill<int>(device)); // another instantiation is another kernel
        using Device other = Device.Cpu();
        Assert.NotSame(first, Fill<float>(other)); // kernels belong to their device
    }

    [Fact]
    public void CpuDeviceDescribesItself()
    {
        using Device device = Device.Cpu();
        Assert.Equal(DeviceKind.Cpu, device.Kind);
        Assert.Contains("CPU accelerator", device.Description);
        Assert.True(device.GroupSize >= 1 && device.GroupCount >= 1);
    }

    [Fact]
    public void CapabilitiesSayWhichNativePathsLoaded()
    {
        using Device cpu = Device.Cpu();
        DeviceCapabilities c = cpu.Capabilities;
        Assert.Equal(DeviceKind.Cpu, c.Kind);
        Assert.Null(c.Architecture);
        Assert.Null(c.DriverVersion);
        Assert.Null(c.CublasLibrary); // no cuBLAS on the CPU accelerator, whatever is installed
        Assert.Null(c.KernelOptimization);
        Assert.False(c.CudaGraphs);
        Assert.False(c.TensorCoreMma);
        Assert.Equal(cpu.ComputeDtype, c.ComputeDtype);
        Assert.Contains("cuBLAS: not loaded", c.ToString());

        using var context = ILGPU.Context.Create(b => b.Cuda());
        if (context.GetCudaDevices().Count > 0)
        {
            // On a GPU machine: everything the fast paths need must have loaded, or the benchmarks measure fallbacks.
            using Device gpu = Device.Cuda();
            DeviceCapabilities g = gpu.Capabilities;
            Assert.StartsWith("SM_", g.Architecture);
            Assert.NotNull(g.DriverVersion);
            Assert.NotNull(g.CublasLibrary);
            Assert.True(g.CudaGraphs);
            Assert.Equal(KernelCompilation.Name(KernelCompilation.Level), g.KernelOptimization);
        }
    }

    [Theory]
    [InlineData(null, ILGPU.OptimizationLevel.O2)]
    [InlineData("", ILGPU.OptimizationLevel.O2)]
    [InlineData(" o1 ", ILGPU.OptimizationLevel.O1)]
    [InlineData("O0", ILGPU.OptimizationLevel.O0)]
    public void KernelOptimizationDefaultsToO2AndCanBeLowered(string? value, ILGPU.OptimizationLevel expected) =>
        Assert.Equal(expected, KernelCompilation.Parse(value));

    [Fact]
    public void AMalformedKernelOptimizationIsRejectedByName()
    {
        var e = Assert.Throws<DeviceNotAvailableException>(() => KernelCompilation.Parse("O3"));
        Assert.Contains(KernelCompilation.EnvironmentVariable, e.Message);
        Assert.Contains("'O3'", e.Message);
    }

    [Theory]
    [InlineData("gpu")]
    [InlineData("cuda:x")]
    [InlineData("cuda:-1")]
    public void MalformedSpecsAreRejected(string spec)
    {
        var e = Assert.Throws<DeviceNotAvailableException>(() => Device.Parse(spec));
        Assert.Contains("QLORA_DEVICE", e.Message);
    }

    [Fact]
    public void AskingForMissingCudaSaysWhatToDo()
    {
        using var context = ILGPU.Context.Create(b => b.Cuda());
        int count = context.GetCudaDevices().Count;
        if (count > 0)
        {
            // On a CUDA machine: the first device opens as CUDA, one past the last is refused with the same advice.
            using (Device cuda = Device.Parse("cuda:0"))
            {
                Assert.Equal(DeviceKind.Cuda, cuda.Kind);
                Assert.Contains("CUDA", cuda.Description, StringComparison.OrdinalIgnoreCase);
            }

            var missing = Assert.Throws<DeviceNotAvailableException>(() => Device.Parse($"cuda:{count}"));
            Assert.Contains($"only {count} exist", missing.Message);
            return;
        }

        var e = Assert.Throws<DeviceNotAvailableException>(() => Device.Parse("cuda:0"));
        Assert.Contains("QLORA_DEVICE=cpu", e.Message);
    }

    [Fact]
    public void CpuSpecGivesTheCpuAccelerator()
    {
        using Device device = Device.Parse("CPU");
        Assert.Equal(DeviceKind.Cpu, device.Kind);
        Assert.True(device.CpuSchedules);

        // The GPU schedules' kernels on the CPU accelerator: small warps, several per group, no CPU schedules.
        using Device gpuKernels = Device.Parse("cpu-gpu-kernels");
        Assert.Equal(DeviceKind.Cpu, gpuKernels.Kind);
        Assert.False(gpuKernels.CpuSchedules);
        Assert.Equal(4, gpuKernels.Accelerator.WarpSize);
        Assert.Equal(8, gpuKernels.Accelerator.MaxNumThreadsPerGroup);
    }
}
