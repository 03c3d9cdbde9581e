using ILGPU.Runtime;
using QLoRA.Core;
using QLoRA.Runtime.Ops;
using QLoRA.Runtime.Tensors;
using Device = QLoRA.Runtime.Devices.Device;

namespace QLoRA.Runtime.Tests;

/// <summary>Work routed to a chosen stream: same results as the default stream, scoped per flow, and stream-local block reuse.</summary>
public class StreamTests
{
    private static float[] Random(int count, int seed)
    {
        var rng = new Random(seed);
        return [.. Enumerable.Range(0, count).Select(_ => (float)((rng.NextDouble() * 2) - 1))];
    }

    private static float[] Norm(Device device, float[] x, float[] w)
    {
        using DeviceTensor tx = DeviceTensor.FromHost<float>(device, x, DType.F32, 6, 40), tw = DeviceTensor.FromHost<float>(device, w, DType.F32, 40);
        using DeviceTensor y = DeviceTensor.Allocate(device, DType.F32, 6, 40), inv = DeviceTensor.Allocate(device, DType.F32, 6);
        RmsNorm.Forward(tx, tw, y, inv, 1e-5f);
        return y.ToHost<float>();
    }

    [Fact]
    public void OpsOnAnotherStreamMatchTheDefaultStreamAndTheScopeRestoresIt()
    {
        using Device device = Device.Cpu();
        float[] x = Random(240, 1), w = Random(40, 2);
        float[] onDefault = Norm(device, x, w);
        using AcceleratorStream stream = device.CreateStream();
        Assert.Same(device.Accelerator.DefaultStream, device.Stream);
        using (device.UseStream(stream))
        {
            Assert.Same(stream, device.Stream);
            Assert.Equal(onDefault, Norm(device, x, w));
        }

        Assert.Same(device.Accelerator.DefaultStream, device.Stream);
    }

    [Fact]
    public void ABlockFreedOnOneStreamIsReusedOnlyOnThatStream()
    {
        using Device device = Device.Cpu();
        using AcceleratorStream stream = device.CreateStream();
        using (device.UseStream(stream))
        {
            DeviceTensor.Allocate(device, DType.F32, 1000).Dispose();
        }

        long hits = device.Allocator.CacheHits;
        using (DeviceTensor.Allocate(device, DType.F32, 1000))
        {
            Assert.Equal(hits, device.Allocator.CacheHits); // the default stream gets a fresh block
        }

        using (device.UseStream(stream))
        using (DeviceTensor.Allocate(device, DType.F32, 1000))
        {
            Assert.Equal(hits + 1, device.Allocator.CacheHits);
        }
    }
}
