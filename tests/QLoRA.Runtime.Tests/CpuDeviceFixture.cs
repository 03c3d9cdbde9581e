using ILGPU.Runtime.Cuda;
using QLoRA.Runtime.Devices;

namespace QLoRA.Runtime.Tests;

/// <summary>
/// An accelerator shared by a test class (creating one compiles kernels anew). Kernel tests are written once, as an
/// abstract class generic in its fixture, and run on every accelerator below: the default CPU device (2-lane warps, the
/// Ops' CPU schedules: SIMD GEMM, barrier-free attention), the CPU accelerator emulating a GPU's 32-lane warps and
/// running the GPU schedules' kernels (reductions, shuffles and tiles at full width), and CUDA where the test executable
/// runs on a GPU machine — there the kernels themselves are tested, not an emulation. Where an accelerator is absent,
/// its tests are reported as skipped with the reason.
/// </summary>
public abstract class DeviceFixture : IDisposable
{
    private readonly Device? _device;
    private readonly string _missing;

    protected DeviceFixture(Func<Device?> create, string missing)
    {
        _missing = missing;
        _device = create();
    }

    /// <summary>The accelerator; skips the calling test when this machine has none of this kind.</summary>
    public Device Device => _device ?? throw SkipNow();

    /// <summary>Skips the test (from a test class constructor: all of its tests) when the accelerator is absent.</summary>
    public DeviceFixture RequireDevice()
    {
        if (_device is null)
        {
            Assert.Skip(_missing);
        }

        return this;
    }

    public void Dispose()
    {
        _device?.Dispose();
        GC.SuppressFinalize(this);
    }

    private Exception SkipNow()
    {
        Assert.Skip(_missing);
        return new InvalidOperationException(); // not reached: Assert.Skip throws
    }
}

/// <summary>The default CPU device: 2-lane warps, one group per core, the Ops' CPU schedules.</summary>
public sealed class CpuDeviceFixture() : DeviceFixture(Device.Cpu, "");

/// <summary>
/// The CPU accelerator with a GPU's 32-lane warps, one warp per group and one group at a time (32 OS threads, so tests
/// keep shapes small and leave the other test assemblies their cores), running the GPU schedules' kernels.
/// </summary>
public sealed class CpuWarp32DeviceFixture() : DeviceFixture(() => Device.Cpu(32, 1, multiprocessors: 1, cpuSchedules: false), "");

/// <summary>CUDA device 0 when the machine has one (run the packed test executable on a GPU machine).</summary>
public sealed class CudaDeviceFixture() : DeviceFixture(CreateCuda, "no CUDA device here: these kernel tests run on CUDA when the test executable runs on a GPU machine")
{
    private static Device? CreateCuda()
    {
        using (var probe = ILGPU.Context.Create(b => b.Cuda()))
        {
            if (probe.GetCudaDevices().Count == 0)
            {
                return null;
            }
        }

        return Device.Cuda();
    }
}

/// <summary>
/// The CPU accelerator running the GPU schedules' kernels with small warps (4 lanes, 2 warps per group, 2 groups at
/// once): whole-model tests of the path a GPU takes (tensor layouts, dtype views, barriers) at CPU-test speed.
/// </summary>
public sealed class CpuGpuKernelsDeviceFixture() : DeviceFixture(() => Device.Cpu(4, 2, multiprocessors: 2, cpuSchedules: false), "");
