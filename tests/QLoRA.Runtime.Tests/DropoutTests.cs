using QLoRA.Core;
using QLoRA.Core.Quantization;
using QLoRA.Runtime.Layers;
using QLoRA.Runtime.Ops;
using QLoRA.Runtime.Tensors;

namespace QLoRA.Runtime.Tests;

/// <summary>Seeded inverted dropout, and LoRA's input dropout in training: gradients by finite differences through the same mask.</summary>
public abstract class DropoutTests<TDevice>(TDevice fixture) : IClassFixture<TDevice>
    where TDevice : DeviceFixture
{
    private static float[] Random(int count, int seed, double scale = 1) => Narrow.Random(count, seed, DType.F32, scale);

    [Theory]
    [InlineData(0.1, DType.F32)]
    [InlineData(0.5, DType.BF16)]
    public void KeepsOneMinusPScaledAndIsAFunctionOfTheSeed(double p, DType dtype)
    {
        const int n = 200_003;
        float[] x = Narrow.Random(n, 1, dtype);
        using DeviceTensor tx = DeviceTensor.FromSingle(fixture.Device, x, dtype, n), y = DeviceTensor.Allocate(fixture.Device, dtype, n), again = DeviceTensor.Allocate(fixture.Device, dtype, n), other = DeviceTensor.Allocate(fixture.Device, dtype, n);
        Dropout.Apply(tx, y, p, seed: 7);
        Dropout.Apply(tx, again, p, seed: 7);
        Dropout.Apply(tx, other, p, seed: 8);
        float[] got = y.ToSingle();
        Assert.Equal(got, again.ToSingle());
        float scale = (float)(1 / (1 - p));
        int kept = 0;
        for (int i = 0; i < n; i++)
        {
            if (got[i] != 0)
            {
                kept++;
                Assert.Equal(Narrow.Round(x[i] * scale, dtype), got[i]);
            }
        }

        // Binomial(n, 1 − p): within 5 standard deviations.
        double sigma = Math.Sqrt(n * p * (1 - p));
        Assert.InRange(kept, (n * (1 - p)) - (5 * sigma), (n * (1 - p)) + (5 * sigma));
        float[] otherMask = other.ToSingle();
        int differ = Enumerable.Range(0, n).Count(i => (got[i] != 0) != (otherMask[i] != 0));
        Assert.InRange(differ, n * 2 * p * (1 - p) * 0.9, n * 2 * p * (1 - p) * 1.1); // independent masks
        // Neighbouring elements are not correlated (a weak hash would keep runs together).
        int bothKept = Enumerable.Range(0, n - 1).Count(i => got[i] != 0 && got[i + 1] != 0);
        Assert.InRange(bothKept, (n - 1) * (1 - p) * (1 - p) * 0.97, (n - 1) * (1 - p) * (1 - p) * 1.03);
    }

    [Fact]
    public void ZeroProbabilityIsTheIdentityAndOutOfRangeIsRejected()
    {
        float[] x = Random(1000, 2);
        using DeviceTensor tx = DeviceTensor.FromHost<float>(fixture.Device, x, DType.F32, 1000), y = DeviceTensor.Allocate(fixture.Device, DType.F32, 1000);
        Dropout.Apply(tx, y, 0, seed: 3);
        Assert.Equal(x, y.ToHost<float>());
        Assert.Throws<ArgumentOutOfRangeException>(() => Dropout.Apply(tx, y, 1.0, seed: 3));
        Assert.Throws<ArgumentOutOfRangeException>(() => new LoraSlot(fixture.Device, new float[4], new float[4], 1, 4, 4, 1f, dropout: -0.1));
    }

    [Fact]
    public void LoraDropoutInTrainingMatchesFloat64ThroughTheSameMask()
    {
        const int tokens = 5, inFeatures = 32, outFeatures = 12, rank = 3;
        const float scaling = 1.5f;
        const double p = 0.3;
        var weight = QuantizedTensor.Quantize(Random(outFeatures * inFeatures, 3, 0.2), [outFeatures, inFeatures]);
        float[] w = weight.DequantizeToSingle(), a = Random(rank * inFeatures, 4, 0.3), b = Random(outFeatures * rank, 5, 0.3);
        float[] x = Random(tokens * inFeatures, 6), c = Random(tokens * outFeatures, 7);
        Devices.Device device = fixture.Device;
        using var layer = new QuantizedLinear(device, DeviceQuantizedTensor.Upload(device, weight)) { Lora = new LoraSlot(device, a, b, rank, inFeatures, outFeatures, scaling, p) { DropoutSeed = 42 } };

        // The mask the layer will use: dropout of ones with the same seed.
        using DeviceTensor ones = DeviceTensor.FromHost<float>(device, Enumerable.Repeat(1f, tokens * inFeatures).ToArray(), DType.F32, tokens, inFeatures);
        using DeviceTensor maskTensor = DeviceTensor.Allocate(device, DType.F32, tokens, inFeatures);
        Dropout.Apply(ones, maskTensor, p, 42);
        float[] mask = maskTensor.ToHost<float>();
        Assert.Contains(0f, mask);

        double[] Forward(float[] xs, float[] As, float[] Bs)
        {
            var y = new double[tokens * outFeatures];
            for (int t = 0; t < tokens; t++)
            {
                for (int o = 0; o < outFeatures; o++)
                {
                    double sum = 0;
                    for (int i = 0; i < inFeatures; i++)
                    {
                        sum += (double)xs[(t * inFeatures) + i] * w[(o * inFeatures) + i];
                    }

                    for (int r = 0; r < rank; r++)
                    {
                        double xa = 0;
                        for (int i = 0; i < inFeatures; i++)
                        {
                            xa += (double)xs[(t * inFeatures) + i] * mask[(t * inFeatures) + i] * As[(r * inFeatures) + i];
                        }

                        sum += scaling * xa * Bs[(o * rank) + r];
                    }

                    y[(t * outFeatures) + o] = sum;
                }
            }

            return y;
        }

        using DeviceTensor tx = DeviceTensor.FromHost<float>(device, x, DType.F32, tokens, inFeatures), ty = DeviceTensor.Allocate(device, DType.F32, tokens, outFeatures);
        layer.Forward(tx, ty, training: true);
        double[] expected = Forward(x, a, b);
        float[] y = ty.ToHost<float>();
        for (int i = 0; i < y.Length; i++)
        {
            Assert.True(Math.Abs(y[i] - expected[i]) <= 1e-5 * (Math.Abs(expected[i]) + 1), $"y[{i}] {y[i]} vs {expected[i]}");
        }

        // Inference ignores dropout.
        using DeviceTensor inference = DeviceTensor.Allocate(device, DType.F32, tokens, outFeatures);
        layer.Forward(tx, inference);
        Assert.NotEqual(y, inference.ToHost<float>());

        using DeviceTensor dy = DeviceTensor.FromHost<float>(device, c, DType.F32, tokens, outFeatures), dx = DeviceTensor.Allocate(device, DType.F32, tokens, inFeatures);
        layer.Backward(tx, dy, dx, training: true);
        float[] gotDx = dx.ToHost<float>(), gotDa = layer.Lora!.GradA.ToHost<float>(), gotDb = layer.Lora.GradB.ToHost<float>();
        double Loss(float[] xs, float[] As, float[] Bs) => Forward(xs, As, Bs).Select((v, i) => v * c[i]).Sum();
        void Check(string name, float[] values, float[] grads, Func<float[], double> loss)
        {
            for (int i = 0; i < values.Length; i += 5)
            {
                float[] plus = (float[])values.Clone(), minus = (float[])values.Clone();
                plus[i] += 1e-2f;
                minus[i] -= 1e-2f;
                double fd = (loss(plus) - loss(minus)) / (plus[i] - minus[i]);
                Assert.True(Math.Abs(fd - grads[i]) <= 1e-4 * (Math.Abs(fd) + 1), $"{name}[{i}]: finite difference {fd} vs {grads[i]}");
            }
        }

        Check("dx", x, gotDx, xs => Loss(xs, a, b));
        Check("dA", a, gotDa, As => Loss(x, As, b));
        Check("dB", b, gotDb, Bs => Loss(x, a, Bs));
    }
}

/// <summary><see cref="DropoutTests{TDevice}"/> on the CPU accelerator with 2-lane warps.</summary>
public sealed class DropoutTestsOnCpu(CpuDeviceFixture fixture) : DropoutTests<CpuDeviceFixture>(fixture);

/// <summary><see cref="DropoutTests{TDevice}"/> on the CPU accelerator with 32-lane warps.</summary>
public sealed class DropoutTestsOnCpuWarp32(CpuWarp32DeviceFixture fixture) : DropoutTests<CpuWarp32DeviceFixture>(fixture);

/// <summary><see cref="DropoutTests{TDevice}"/> on CUDA (skipped without a CUDA device).</summary>
public sealed class DropoutTestsOnCuda(CudaDeviceFixture fixture) : DropoutTests<CudaDeviceFixture>(fixture);
