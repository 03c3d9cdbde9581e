using QLoRA.Runtime.Devices;

namespace QLoRA.Runtime.Tests;

/// <summary>One CPU accelerator shared by a test class (creating one compiles kernels anew).</summary>
public sealed class CpuDeviceFixture : IDisposable
{
    public Device Device { get; } = Device.Cpu();

    public void Dispose() => Device.Dispose();
}
