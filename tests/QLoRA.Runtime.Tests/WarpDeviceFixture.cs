using QLoRA.Runtime.Devices;

namespace QLoRA.Runtime.Tests;

/// <summary>
/// A CPU accelerator shaped like a GPU for the kernels that need it: 32-lane warps, four per group, one group at a time
/// (128 OS threads, so tests keep shapes small and leave the other test assemblies their cores).
/// </summary>
public sealed class WarpDeviceFixture : IDisposable
{
    public Device Device { get; } = Device.Cpu(32, 4, multiprocessors: 1, cpuSchedules: false);

    public void Dispose() => Device.Dispose();
}
