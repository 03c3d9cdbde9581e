using QLoRA.Core;
using QLoRA.Runtime.Kernels;
using QLoRA.Runtime.Ops;
using QLoRA.Runtime.Tensors;

namespace QLoRA.Runtime.Tests;

/// <summary>The kernels' bf16/f16 load and store, bit for bit against System.Half and a float64 rounding reference.</summary>
public abstract class ElementCodecTests<TDevice>(TDevice fixture) : IClassFixture<TDevice>
    where TDevice : DeviceFixture
{
    [Fact]
    public void F16LoadIsExactForEveryBitPattern()
    {
        var codec = default(F16Element);
        for (int bits = 0; bits <= ushort.MaxValue; bits++)
        {
            float expected = (float)BitConverter.UInt16BitsToHalf((ushort)bits);
            float got = codec.Load((ushort)bits);
            Assert.True(float.IsNaN(expected) ? float.IsNaN(got) : BitConverter.SingleToUInt32Bits(expected) == BitConverter.SingleToUInt32Bits(got), $"0x{bits:X4}: {got} vs {expected}");
        }
    }

    // Every finite half, the midpoint to its upper neighbour (a tie) and one float ulp either side of that midpoint:
    // the cases where round-to-nearest-even is decided. Plus random floats from far below the subnormals to past 65504.
    public static IEnumerable<float> F16Probes()
    {
        for (int bits = 0; bits < 0x7C00; bits++)
        {
            double value = (double)BitConverter.UInt16BitsToHalf((ushort)bits);
            double next = bits + 1 == 0x7C00 ? 65520.0 : (double)BitConverter.UInt16BitsToHalf((ushort)(bits + 1));
            float mid = (float)((value + next) / 2);
            foreach (float f in new[] { (float)value, mid, MathF.BitDecrement(mid), MathF.BitIncrement(mid) })
            {
                yield return f;
                yield return -f;
            }
        }

        var rng = new Random(5);
        for (int i = 0; i < 100_000; i++)
        {
            yield return (float)(((rng.NextDouble() * 2) - 1) * Math.ScaleB(1, rng.Next(-30, 18)));
        }

        foreach (float f in new[] { float.PositiveInfinity, float.NegativeInfinity, float.MaxValue, 1e-45f, 65519.996f, 65520f, 2.9802322e-8f, 2.9802326e-8f })
        {
            yield return f;
        }
    }

    [Fact]
    public void F16StoreRoundsToNearestEvenLikeSystemHalf()
    {
        var codec = default(F16Element);
        foreach (float f in F16Probes())
        {
            ushort expected = BitConverter.HalfToUInt16Bits((Half)f);
            Assert.True(expected == codec.Store(f), $"{f:R}: 0x{codec.Store(f):X4} vs 0x{expected:X4}");
        }

        Assert.True(Half.IsNaN(BitConverter.UInt16BitsToHalf(codec.Store(float.NaN))));
    }

    [Fact]
    public void Bf16StoreRoundsToNearestEvenAndLoadIsExact()
    {
        var codec = default(Bf16Element);
        var rng = new Random(6);
        var probes = new List<float>();
        for (int i = 0; i < 100_000; i++)
        {
            // Random bf16 values, the ties above them and their neighbours, and random floats.
            uint upper = (uint)rng.Next(0, 0x7F7F) << 16;
            float tie = BitConverter.UInt32BitsToSingle(upper | 0x8000);
            probes.AddRange([BitConverter.UInt32BitsToSingle(upper), tie, MathF.BitDecrement(tie), MathF.BitIncrement(tie), -tie]);
            probes.Add((float)(((rng.NextDouble() * 2) - 1) * Math.ScaleB(1, rng.Next(-126, 127))));
        }

        foreach (float f in probes)
        {
            float expected = Narrow.Round(f, DType.BF16);
            ushort stored = codec.Store(f);
            Assert.True(BitConverter.SingleToUInt32Bits(expected) == (uint)stored << 16, $"{f:R}: 0x{stored:X4} vs {expected:R}");
            Assert.Equal(expected, codec.Load(stored));
        }

        Assert.True(float.IsNaN(codec.Load(codec.Store(float.NaN))));
        Assert.Equal(float.PositiveInfinity, codec.Load(codec.Store(float.MaxValue))); // rounds past the largest bf16
    }

    [Theory]
    [InlineData(DType.BF16)]
    [InlineData(DType.F16)]
    public void DeviceConversionMatchesTheHostReferenceBothWays(DType dtype)
    {
        float[] values = [.. Enumerable.Range(0, 4099).Select(i => (float)(Math.Sin(i * 0.37) * Math.Pow(10, (i % 9) - 4)))];
        using DeviceTensor wide = DeviceTensor.FromHost<float>(fixture.Device, values, DType.F32, values.Length);
        using DeviceTensor narrow = Elementwise.ConvertTo(wide, dtype);
        Assert.Equal(dtype, narrow.Dtype);
        Assert.Equal(Narrow.Round(values, dtype), narrow.ToSingle());
        using (DeviceTensor fromHost = DeviceTensor.FromSingle(fixture.Device, values, dtype, values.Length))
        {
            Assert.Equal(Narrow.Round(values, dtype), fromHost.ToSingle()); // the host-side rounding of uploads agrees
        }

        using DeviceTensor other = Elementwise.ConvertTo(narrow, dtype == DType.BF16 ? DType.F16 : DType.BF16);
        Assert.Equal(Narrow.Round(Narrow.Round(values, dtype), other.Dtype), other.ToSingle());
    }

    [Fact]
    public void NonComputeDtypesAreRejectedByName()
    {
        using DeviceTensor ids = DeviceTensor.Allocate(fixture.Device, DType.I32, 4);
        using DeviceTensor y = DeviceTensor.Allocate(fixture.Device, DType.F32, 4);
        var e = Assert.Throws<ArgumentException>(() => Elementwise.Convert(ids, y));
        Assert.Contains("x is I32", e.Message);
        Assert.Throws<ArgumentException>(() => fixture.Device.ComputeDtype = DType.U8);
    }
}

/// <summary><see cref="ElementCodecTests{TDevice}"/> on the CPU accelerator with 2-lane warps.</summary>
public sealed class ElementCodecTestsOnCpu(CpuDeviceFixture fixture) : ElementCodecTests<CpuDeviceFixture>(fixture);

/// <summary><see cref="ElementCodecTests{TDevice}"/> on the CPU accelerator with 32-lane warps.</summary>
public sealed class ElementCodecTestsOnCpuWarp32(CpuWarp32DeviceFixture fixture) : ElementCodecTests<CpuWarp32DeviceFixture>(fixture);

/// <summary><see cref="ElementCodecTests{TDevice}"/> on CUDA (skipped without a CUDA device).</summary>
public sealed class ElementCodecTestsOnCuda(CudaDeviceFixture fixture) : ElementCodecTests<CudaDeviceFixture>(fixture);
