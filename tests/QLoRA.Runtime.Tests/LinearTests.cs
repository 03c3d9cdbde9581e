using System.Runtime.InteropServices;
using QLoRA.Core;
using QLoRA.Core.SafeTensors;
using QLoRA.Core.Weights;
using QLoRA.Runtime.Layers;
using QLoRA.Runtime.Tensors;

namespace QLoRA.Runtime.Tests;

/// <summary>The frozen dense layer: forward with bias and the input gradient against float64, bounded by γₙ·Σ|terms|.</summary>
public abstract class LinearTests<TDevice>(TDevice fixture) : IClassFixture<TDevice>
    where TDevice : DeviceFixture
{
    private const int Tokens = 7, In = 37, Out = 23;

    private static float[] Random(int count, int seed)
    {
        var rng = new Random(seed);
        return [.. Enumerable.Range(0, count).Select(_ => (float)((rng.NextDouble() * 2) - 1))];
    }

    // γₙ = n·u / (1 − n·u) for float32 (u = 2⁻²⁴): the forward error bound of an n-term dot product.
    private static double Gamma(int n) => n * Math.Pow(2, -24) / (1 - (n * Math.Pow(2, -24)));

    [Fact]
    public void ForwardWithBiasAndBackwardMatchFloat64()
    {
        float[] w = Random(Out * In, 1), bias = Random(Out, 2), x = Random(Tokens * In, 3), dy = Random(Tokens * Out, 4);
        string path = Path.Combine(Directory.CreateTempSubdirectory("qlora-linear-").FullName, "model.safetensors");
        SafeTensorsWriter.Save(path, [
            (new SafeTensorSpec("lm_head.weight", DType.F32, [Out, In]), MemoryMarshal.AsBytes(w.AsSpan()).ToArray()),
            (new SafeTensorSpec("lm_head.bias", DType.F32, [Out]), MemoryMarshal.AsBytes(bias.AsSpan()).ToArray()),
        ]);
        var device = fixture.Device;
        Assert.Equal(DType.F32, device.ComputeDtype);
        using var source = CheckpointWeightSource.Open(path);
        using var layer = Linear.Load(device, source, "lm_head.weight", In, Out);
        Assert.NotNull(layer.Bias);

        using var tx = DeviceTensor.FromSingle(device, x, DType.F32, Tokens, In);
        using var ty = DeviceTensor.FromSingle(device, Enumerable.Repeat(float.NaN, Tokens * Out).ToArray(), DType.F32, Tokens, Out);
        layer.Forward(tx, ty);
        float[] y = ty.ToHost<float>();
        for (int t = 0; t < Tokens; t++)
        for (int o = 0; o < Out; o++)
        {
            double sum = bias[o], mag = Math.Abs(bias[o]);
            for (int i = 0; i < In; i++)
            {
                sum += (double)x[(t * In) + i] * w[(o * In) + i];
                mag += Math.Abs((double)x[(t * In) + i] * w[(o * In) + i]);
            }
            Assert.True(Math.Abs(y[(t * Out) + o] - sum) <= Gamma(In + 1) * mag, $"y[{t},{o}] = {y[(t * Out) + o]}, float64 {sum}");
        }

        using var tdy = DeviceTensor.FromSingle(device, dy, DType.F32, Tokens, Out);
        using var tdx = DeviceTensor.FromSingle(device, Enumerable.Repeat(float.NaN, Tokens * In).ToArray(), DType.F32, Tokens, In);
        layer.Backward(tdy, tdx);
        float[] dx = tdx.ToHost<float>();
        for (int t = 0; t < Tokens; t++)
        for (int i = 0; i < In; i++)
        {
            double sum = 0, mag = 0;
            for (int o = 0; o < Out; o++)
            {
                sum += (double)dy[(t * Out) + o] * w[(o * In) + i];
                mag += Math.Abs((double)dy[(t * Out) + o] * w[(o * In) + i]);
            }
            Assert.True(Math.Abs(dx[(t * In) + i] - sum) <= Gamma(Out) * mag, $"dx[{t},{i}] = {dx[(t * In) + i]}, float64 {sum}");
        }
    }
}

/// <summary><see cref="LinearTests{TDevice}"/> on the CPU accelerator with 2-lane warps.</summary>
public sealed class LinearTestsOnCpu(CpuDeviceFixture fixture) : LinearTests<CpuDeviceFixture>(fixture);

/// <summary><see cref="LinearTests{TDevice}"/> on the CPU accelerator with 32-lane warps.</summary>
public sealed class LinearTestsOnCpuWarp32(CpuWarp32DeviceFixture fixture) : LinearTests<CpuWarp32DeviceFixture>(fixture);

/// <summary><see cref="LinearTests{TDevice}"/> on CUDA (skipped without a CUDA device).</summary>
public sealed class LinearTestsOnCuda(CudaDeviceFixture fixture) : LinearTests<CudaDeviceFixture>(fixture);
