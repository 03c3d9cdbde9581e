using ILGPU;
using ILGPU.Runtime;
using QLoRA.Core.Numerics;
using QLoRA.Core.Quantization;
using QLoRA.Runtime.Tensors;

namespace QLoRA.Runtime.Tests;

/// <summary>The device dequantizer against QLoRA.Core's CPU dequantizer (itself tested against bitsandbytes' rules): identical bits.</summary>
public abstract class DequantizeKernelTests<TDevice>(TDevice fixture) : IClassFixture<TDevice>
    where TDevice : DeviceFixture
{
    private static float[] Normal(int count, int seed, double scale)
    {
        var rng = new Random(seed);
        return [.. Enumerable.Range(0, count).Select(_ => (float)(scale * Math.Sqrt(-2 * Math.Log(1 - rng.NextDouble())) * Math.Cos(2 * Math.PI * rng.NextDouble())))];
    }

    public static TheoryData<QuantType, int, bool, int> Cases()
    {
        var data = new TheoryData<QuantType, int, bool, int>();
        foreach (QuantType type in new[] { QuantType.Nf4, QuantType.Fp4 })
        {
            foreach (int blockSize in new[] { 32, 64, 256, 4096 })
            {
                data.Add(type, blockSize, true, (blockSize * 3) + 7);   // partial last block, odd length
                data.Add(type, blockSize, false, blockSize * 2);        // whole chunks only
            }
        }

        data.Add(QuantType.Nf4, 64, true, 1);
        data.Add(QuantType.Nf4, 64, true, 33);
        // More than one nested block of 256 absmax values (every case above has fewer than 256 blocks).
        data.Add(QuantType.Nf4, 32, true, (32 * 256 * 2) + 77);
        data.Add(QuantType.Fp4, 64, true, (64 * 600) + 5);
        return data;
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void Bf16OutputMatchesTheHostDequantizerBitForBit(QuantType type, int blockSize, bool doubleQuant, int n)
    {
        var tensor = QuantizedTensor.Quantize(Normal(n, n + blockSize, 0.03), [n], new QuantizationOptions(type, blockSize, doubleQuant));
        var expected = new BFloat16[n];
        tensor.Dequantize(expected);

        using DeviceQuantizedTensor onDevice = DeviceQuantizedTensor.Upload(fixture.Device, tensor);
        using MemoryBuffer1D<ushort, Stride1D.Dense> output = fixture.Device.Accelerator.Allocate1D<ushort>(n);
        output.MemSet(0xFF); // poison: every element must be written
        onDevice.DequantizeToBf16(output.View);
        ushort[] got = output.GetAsArray1D();
        Assert.Equal(expected.Select(b => b.Bits), got);
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void F32OutputMatchesTheHostDequantizerBitForBit(QuantType type, int blockSize, bool doubleQuant, int n)
    {
        var tensor = QuantizedTensor.Quantize(Normal(n, (2 * n) + blockSize, 2.0), [n], new QuantizationOptions(type, blockSize, doubleQuant));
        float[] expected = tensor.DequantizeToSingle();

        using DeviceQuantizedTensor onDevice = DeviceQuantizedTensor.Upload(fixture.Device, tensor);
        using MemoryBuffer1D<float, Stride1D.Dense> output = fixture.Device.Accelerator.Allocate1D<float>(n);
        output.MemSet(0xFF); // NaN poison
        onDevice.DequantizeToF32(output.View);
        float[] got = output.GetAsArray1D();
        Assert.Equal(expected.Select(BitConverter.SingleToUInt32Bits), got.Select(BitConverter.SingleToUInt32Bits));
    }

    [Fact]
    public void ShortOutputIsRejected()
    {
        var tensor = QuantizedTensor.Quantize(Normal(64, 1, 1), [64]);
        using DeviceQuantizedTensor onDevice = DeviceQuantizedTensor.Upload(fixture.Device, tensor);
        using MemoryBuffer1D<float, Stride1D.Dense> output = fixture.Device.Accelerator.Allocate1D<float>(63);
        Assert.Throws<ArgumentException>(() => onDevice.DequantizeToF32(output.View));
    }
}

/// <summary><see cref="DequantizeKernelTests{TDevice}"/> on the CPU accelerator with 2-lane warps.</summary>
public sealed class DequantizeKernelTestsOnCpu(CpuDeviceFixture fixture) : DequantizeKernelTests<CpuDeviceFixture>(fixture);

/// <summary><see cref="DequantizeKernelTests{TDevice}"/> on the CPU accelerator with 32-lane warps.</summary>
public sealed class DequantizeKernelTestsOnCpuWarp32(CpuWarp32DeviceFixture fixture) : DequantizeKernelTests<CpuWarp32DeviceFixture>(fixture);

/// <summary><see cref="DequantizeKernelTests{TDevice}"/> on CUDA (skipped without a CUDA device).</summary>
public sealed class DequantizeKernelTestsOnCuda(CudaDeviceFixture fixture) : DequantizeKernelTests<CudaDeviceFixture>(fixture);
