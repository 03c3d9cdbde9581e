using QLoRA.Core;
using QLoRA.Runtime.Devices;
using QLoRA.Runtime.Ops;
using QLoRA.Runtime.Tensors;
using Device = QLoRA.Runtime.Devices.Device;

namespace QLoRA.Runtime.Tests;

/// <summary>
/// The launch profile charges every launch to the kernel it ran, on the GPU schedules' kernels (the CPU accelerator,
/// where marks are clock readings; on CUDA they are timing events — the same bookkeeping).
/// </summary>
public class LaunchProfileTests
{
    [Fact]
    public void EveryLaunchIsChargedToItsKernelAndTheProfileEnds()
    {
        using Device device = Device.Cpu(4, 2, cpuSchedules: false);
        var rng = new Random(3);
        float[] Values(int n) => [.. Enumerable.Range(0, n).Select(_ => (float)(rng.NextDouble() - 0.5))];
        using DeviceTensor a = DeviceTensor.FromSingle(device, Values(4096), DType.F32, 64, 64);
        using DeviceTensor b = DeviceTensor.FromSingle(device, Values(4096), DType.F32, 64, 64);
        using DeviceTensor y = DeviceTensor.Allocate(device, DType.F32, 64, 64);
        Elementwise.Add(a, b, y); // compiled before the profile: compilation is not what is measured

        long before = device.LaunchCount;
        LaunchProfile profile = device.Profile();
        Assert.True(device.IsProfiling);
        Assert.Throws<InvalidOperationException>(() => device.Profile()); // one at a time
        for (int i = 0; i < 3; i++)
        {
            Elementwise.Add(a, b, y);
        }

        SwiGlu.Forward(a, b, y);
        SwiGlu.Forward(a, b, y);
        long launches = device.LaunchCount - before;
        IReadOnlyList<KernelTime> times = profile.Stop();

        Assert.False(device.IsProfiling);
        Assert.Equal(launches, times.Sum(t => t.Launches));
        KernelTime add = Assert.Single(times, t => t.Kernel.StartsWith("ElementwiseKernels.Add<", StringComparison.Ordinal));
        KernelTime swiglu = Assert.Single(times, t => t.Kernel.StartsWith("SwiGluKernels.Forward<", StringComparison.Ordinal));
        Assert.Equal(3, add.Launches);
        Assert.Equal(2, swiglu.Launches);
        Assert.All(times, t => Assert.True(double.IsFinite(t.Milliseconds) && t.Milliseconds >= 0, $"{t.Kernel}: {t.Milliseconds} ms"));
        Assert.True(times.Zip(times.Skip(1)).All(p => p.First.Milliseconds >= p.Second.Milliseconds)); // longest first
        Assert.Throws<InvalidOperationException>(() => profile.Stop());

        using (device.Profile())
        {
            Elementwise.Add(a, b, y); // a disposed profile ends too, so another can start
        }

        Assert.False(device.IsProfiling);
        device.Profile().Stop();
    }

    [Fact]
    public void ALaunchSiteIsNamedByItsOwnerWhenTheKernelIsNotAtHand()
    {
        Func<int, int> lambda = static x => x + 1;
        Assert.Equal($"{nameof(LaunchProfileTests)}.{nameof(ALaunchSiteIsNamedByItsOwnerWhenTheKernelIsNotAtHand)}", LaunchProfile.SiteName(lambda.Method));
        Assert.Null(LaunchProfile.KernelName(lambda)); // not an ILGPU launcher
    }
}
