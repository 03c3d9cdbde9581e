using QLoRA.Core;
using QLoRA.Core.Quantization;
using QLoRA.Runtime.Layers;
using QLoRA.Runtime.Tensors;

namespace QLoRA.Runtime.Tests;

/// <summary>NF4 base + LoRA linear layer: forward and gradients against float64 math and finite differences.</summary>
public abstract class QuantizedLinearTests<TDevice>(TDevice fixture) : IClassFixture<TDevice>
    where TDevice : DeviceFixture
{
    private const int Tokens = 5, In = 48, Out = 20, Rank = 4;
    private const float Scaling = 2f;

    private static float[] Random(int count, int seed, double scale = 1)
    {
        var rng = new Random(seed);
        return [.. Enumerable.Range(0, count).Select(_ => (float)(((rng.NextDouble() * 2) - 1) * scale))];
    }

    // Plain float64 forward: y = x Wᵀ + s (x Aᵀ) Bᵀ.
    private static double[] Forward(float[] x, float[] w, float[] a, float[] b)
    {
        var y = new double[Tokens * Out];
        for (int t = 0; t < Tokens; t++)
        {
            var xa = new double[Rank];
            for (int r = 0; r < Rank; r++)
            {
                for (int i = 0; i < In; i++)
                {
                    xa[r] += (double)x[(t * In) + i] * a[(r * In) + i];
                }
            }

            for (int o = 0; o < Out; o++)
            {
                double sum = 0;
                for (int i = 0; i < In; i++)
                {
                    sum += (double)x[(t * In) + i] * w[(o * In) + i];
                }

                for (int r = 0; r < Rank; r++)
                {
                    sum += Scaling * xa[r] * b[(o * Rank) + r];
                }

                y[(t * Out) + o] = sum;
            }
        }

        return y;
    }

    [Fact]
    public void ForwardAndBackwardMatchFloat64AndFiniteDifferences()
    {
        float[] weights = Random(Out * In, 1, 0.2);
        var quantized = QuantizedTensor.Quantize(weights, [Out, In], new QuantizationOptions(QuantType.Nf4, 32, true));
        float[] w = quantized.DequantizeToSingle(); // the layer computes with exactly these values
        float[] x = Random(Tokens * In, 2), a = Random(Rank * In, 3, 0.3), b = Random(Out * Rank, 4, 0.3), c = Random(Tokens * Out, 5);

        Devices.Device device = fixture.Device;
        using var layer = new QuantizedLinear(device, DeviceQuantizedTensor.Upload(device, quantized)) { Lora = new LoraSlot(device, a, b, Rank, In, Out, Scaling) };
        using DeviceTensor tx = DeviceTensor.FromHost<float>(device, x, DType.F32, Tokens, In);
        using DeviceTensor ty = DeviceTensor.Allocate(device, DType.F32, Tokens, Out);
        layer.Forward(tx, ty);
        double[] expected = Forward(x, w, a, b);
        float[] y = ty.ToHost<float>();
        for (int i = 0; i < y.Length; i++)
        {
            Assert.True(Math.Abs(y[i] - expected[i]) <= 1e-5 * (Math.Abs(expected[i]) + 1), $"y[{i}] {y[i]} vs {expected[i]}");
        }

        using DeviceTensor dy = DeviceTensor.FromHost<float>(device, c, DType.F32, Tokens, Out);
        using DeviceTensor dx = DeviceTensor.Allocate(device, DType.F32, Tokens, In);
        layer.Backward(tx, dy, dx);
        float[] gotDx = dx.ToHost<float>(), gotDa = layer.Lora!.GradA.ToHost<float>(), gotDb = layer.Lora.GradB.ToHost<float>();

        double Loss(float[] xs, float[] as_, float[] bs) => Forward(xs, w, as_, bs).Select((v, i) => v * c[i]).Sum();
        void Check(string name, float[] values, float[] grads, Func<float[], double> loss, params int[] indices)
        {
            foreach (int i in indices)
            {
                float[] plus = (float[])values.Clone(), minus = (float[])values.Clone();
                plus[i] += 1e-2f;
                minus[i] -= 1e-2f;
                double fd = (loss(plus) - loss(minus)) / (plus[i] - minus[i]);
                Assert.True(Math.Abs(fd - grads[i]) <= 1e-4 * (Math.Abs(fd) + 1), $"{name}[{i}]: finite difference {fd} vs {grads[i]}");
            }
        }

        // The loss is linear in each of x, A, B separately, so central differences are exact up to rounding.
        Check("dx", x, gotDx, xs => Loss(xs, a, b), 0, 17, (Tokens * In) - 1);
        Check("dA", a, gotDa, as_ => Loss(x, as_, b), 0, 50, (Rank * In) - 1);
        Check("dB", b, gotDb, bs => Loss(x, a, bs), 0, 33, (Out * Rank) - 1);

        // Gradients accumulate across backward calls until zeroed.
        layer.Backward(tx, dy, null);
        float[] twice = layer.Lora.GradB.ToHost<float>();
        Assert.True(twice.Zip(gotDb).All(p => Math.Abs(p.First - (2 * p.Second)) <= 1e-5 * (Math.Abs(p.Second) + 1e-3)));
        layer.Lora.ZeroGradients();
        Assert.All(layer.Lora.GradB.ToHost<float>(), v => Assert.Equal(0f, v));
    }

    [Fact]
    public void WrongInputWidthIsRejected()
    {
        var quantized = QuantizedTensor.Quantize(Random(Out * In, 9), [Out, In]);
        using var layer = new QuantizedLinear(fixture.Device, DeviceQuantizedTensor.Upload(fixture.Device, quantized));
        using DeviceTensor x = DeviceTensor.Allocate(fixture.Device, DType.F32, 2, In + 1);
        using DeviceTensor y = DeviceTensor.Allocate(fixture.Device, DType.F32, 2, Out);
        var e = Assert.Throws<ArgumentException>(() => layer.Forward(x, y));
        Assert.Contains($"[tokens, {In}]", e.Message);
    }
}

/// <summary><see cref="QuantizedLinearTests{TDevice}"/> on the CPU accelerator with 2-lane warps.</summary>
public sealed class QuantizedLinearTestsOnCpu(CpuDeviceFixture fixture) : QuantizedLinearTests<CpuDeviceFixture>(fixture);

/// <summary><see cref="QuantizedLinearTests{TDevice}"/> on the CPU accelerator with 32-lane warps.</summary>
public sealed class QuantizedLinearTestsOnCpuWarp32(CpuWarp32DeviceFixture fixture) : QuantizedLinearTests<CpuWarp32DeviceFixture>(fixture);

/// <summary><see cref="QuantizedLinearTests{TDevice}"/> on CUDA (skipped without a CUDA device).</summary>
public sealed class QuantizedLinearTestsOnCuda(CudaDeviceFixture fixture) : QuantizedLinearTests<CudaDeviceFixture>(fixture);
