using ILGPU.Runtime.Cuda;
using QLoRA.Runtime.Devices;

namespace QLoRA.Runtime.Tests;

public class DeviceTests
{
    [Fact]
    public void CpuDeviceDescribesItself()
    {
        using Device device = Device.Cpu();
        Assert.Equal(DeviceKind.Cpu, device.Kind);
        Assert.Contains("CPU accelerator", device.Description);
        Assert.True(device.GroupSize >= 1 && device.GroupCount >= 1);
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
        if (context.GetCudaDevices().Count > 0)
        {
            return; // on a CUDA machine the device exists
        }

        var e = Assert.Throws<DeviceNotAvailableException>(() => Device.Parse("cuda:0"));
        Assert.Contains("QLORA_DEVICE=cpu", e.Message);
    }

    [Fact]
    public void CpuSpecGivesTheCpuAccelerator()
    {
        using Device device = Device.Parse("CPU");
        Assert.Equal(DeviceKind.Cpu, device.Kind);
    }
}
