using ILGPU.Runtime;
using QLoRA.Core;
using QLoRA.Core.Numerics;
using QLoRA.Runtime.Memory;
using QLoRA.Runtime.Tensors;

namespace QLoRA.Runtime.Tests;

public abstract class MemoryTests<TDevice>(TDevice fixture) : IClassFixture<TDevice>
    where TDevice : DeviceFixture
{
    [Theory]
    [InlineData(1, 512)]
    [InlineData(512, 512)]
    [InlineData(513, 1024)]
    [InlineData((1 << 20) - 1, 1 << 20)]
    [InlineData(1 << 20, 2 << 20)]
    [InlineData((2 << 20) + 1, 4 << 20)]
    public void SizeClasses(long request, long rounded)
    {
        Assert.Equal(rounded, CachingAllocator.RoundSize(request));
    }

    [Fact]
    public void FreedBlocksAreReusedAndStatsAddUp()
    {
        using var allocator = new CachingAllocator(fixture.Device.Accelerator);
        DeviceBlock a = allocator.Allocate(1000);
        DeviceBlock b = allocator.Allocate(3 << 20);
        Assert.Equal(1024 + (4 << 20), allocator.AllocatedBytes);
        Assert.Equal(allocator.AllocatedBytes, allocator.ReservedBytes);
        a.Dispose();
        a.Dispose(); // idempotent
        Assert.Equal(4 << 20, allocator.AllocatedBytes);
        Assert.Equal(1024 + (4 << 20), allocator.ReservedBytes);
        DeviceBlock c = allocator.Allocate(900); // same size class: served from the cache
        Assert.Equal(1, allocator.CacheHits);
        Assert.Equal(1024 + (4 << 20), allocator.ReservedBytes);
        Assert.Equal(1024 + (4 << 20), allocator.PeakAllocatedBytes);
        b.Dispose();
        c.Dispose();
        Assert.Equal(0, allocator.AllocatedBytes);
        allocator.ReleaseCache();
        Assert.Equal(0, allocator.ReservedBytes);
    }

    [Fact]
    public void OutOfMemorySaysWhatWasAskedWhatIsFreeAndWhatToChange()
    {
        using var allocator = new CachingAllocator(fixture.Device.Accelerator, limitBytes: 8 << 20);
        using DeviceBlock held = allocator.Allocate(6 << 20);
        DeviceBlock cached = allocator.Allocate(1 << 10);
        cached.Dispose();
        var e = Assert.Throws<DeviceOutOfMemoryException>(() => allocator.Allocate(4 << 20));
        Assert.Equal(4 << 20, e.RequestedBytes);
        Assert.Contains("4.0 MiB requested", e.Message);
        Assert.Contains("6.0 MiB allocated", e.Message);
        Assert.Contains("Reduce the batch size", e.Message);
        Assert.Equal(6 << 20, allocator.ReservedBytes); // the cache was released before giving up
    }

    [Fact]
    public void TensorsRoundTripEveryDtypeAndViewsShareStorage()
    {
        var rng = new Random(3);
        float[] values = [.. Enumerable.Range(0, 6 * 7).Select(_ => (float)rng.NextDouble())];
        using DeviceTensor f32 = DeviceTensor.FromHost<float>(fixture.Device, values, DType.F32, 6, 7);
        Assert.Equal(values, f32.ToHost<float>());
        Assert.Equal(values[14..21], f32.Rows(2, 1).ToHost<float>());
        Assert.Equal([7L, 6], f32.Reshape(7, 6).Shape);
        Assert.Throws<ArgumentException>(() => f32.Reshape(5, 8));
        Assert.Throws<ArgumentOutOfRangeException>(() => f32.Rows(5, 2));
        Assert.Throws<ArgumentException>(() => f32.ToHost<ushort>());

        BFloat16[] bf16 = [.. values.Select(BFloat16.FromSingle)];
        using DeviceTensor b = DeviceTensor.FromHost<BFloat16>(fixture.Device, bf16, DType.BF16, 42);
        Assert.Equal(bf16, b.ToHost<BFloat16>());
        Assert.Throws<ArgumentException>(() => DeviceTensor.FromHost<float>(fixture.Device, values, DType.F32, 5, 7));
    }
}

public abstract class PinnedHostBufferTests<TDevice>(TDevice fixture) : IClassFixture<TDevice>
    where TDevice : DeviceFixture
{
    [Fact]
    public void RoundTripsThroughADeviceBufferOnAStream()
    {
        ILGPU.Runtime.Accelerator accelerator = fixture.Device.Accelerator;
        using var pinned = new QLoRA.Runtime.Memory.PinnedHostBuffer<float>(accelerator, 1000);
        var rng = new Random(5);
        for (int i = 0; i < 1000; i++)
        {
            pinned.Span[i] = (float)rng.NextDouble();
        }

        float[] expected = pinned.Array.ToArray();
        using var device = accelerator.Allocate1D<float>(1000);
        using ILGPU.Runtime.AcceleratorStream stream = accelerator.CreateStream();
        pinned.CopyToDeviceAsync(stream, device.View);
        stream.Synchronize();
        Array.Clear(pinned.Array);
        pinned.CopyFromDeviceAsync(stream, device.View);
        stream.Synchronize();
        Assert.Equal(expected, pinned.Array);
    }
}

/// <summary><see cref="MemoryTests{TDevice}"/> on the CPU accelerator with 2-lane warps.</summary>
public sealed class MemoryTestsOnCpu(CpuDeviceFixture fixture) : MemoryTests<CpuDeviceFixture>(fixture);

/// <summary><see cref="MemoryTests{TDevice}"/> on the CPU accelerator with 32-lane warps.</summary>
public sealed class MemoryTestsOnCpuWarp32(CpuWarp32DeviceFixture fixture) : MemoryTests<CpuWarp32DeviceFixture>(fixture);

/// <summary><see cref="MemoryTests{TDevice}"/> on CUDA (skipped without a CUDA device).</summary>
public sealed class MemoryTestsOnCuda(CudaDeviceFixture fixture) : MemoryTests<CudaDeviceFixture>(fixture);

/// <summary><see cref="PinnedHostBufferTests{TDevice}"/> on the CPU accelerator with 2-lane warps.</summary>
public sealed class PinnedHostBufferTestsOnCpu(CpuDeviceFixture fixture) : PinnedHostBufferTests<CpuDeviceFixture>(fixture);

/// <summary><see cref="PinnedHostBufferTests{TDevice}"/> on the CPU accelerator with 32-lane warps.</summary>
public sealed class PinnedHostBufferTestsOnCpuWarp32(CpuWarp32DeviceFixture fixture) : PinnedHostBufferTests<CpuWarp32DeviceFixture>(fixture);

/// <summary><see cref="PinnedHostBufferTests{TDevice}"/> on CUDA (skipped without a CUDA device).</summary>
public sealed class PinnedHostBufferTestsOnCuda(CudaDeviceFixture fixture) : PinnedHostBufferTests<CudaDeviceFixture>(fixture);
