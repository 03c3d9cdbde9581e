using QLoRA.Runtime.Devices;

namespace QLoRA.Runtime.Tests;

/// <summary>
/// A CPU accelerator shaped like a GPU for the kernels that need it: 32-lane warps, four per group (128 OS threads a
/// group, so tests keep shapes small).
/// </summary>
public sealed class WarpDeviceFixture : IDisposable
{
    public Device Device { get; } = Device.Cpu(32, 4);

    public void Dispose() => Device.Dispose();
}
