using ILGPU;
using ILGPU.Runtime;
using QLoRA.Core;
using QLoRA.Runtime.Ops;
using QLoRA.Runtime.Tensors;

namespace QLoRA.Runtime.Tests;

/// <summary>Fused, chunked LM loss against a float64 log-softmax and finite differences.</summary>
public abstract class CrossEntropyTests<TDevice>(TDevice fixture) : IClassFixture<TDevice>
    where TDevice : DeviceFixture
{
    private const int Tokens = 9, Dim = 12, Vocab = 37;

    private static float[] Random(int count, int seed, double scale = 1)
    {
        var rng = new Random(seed);
        return [.. Enumerable.Range(0, count).Select(_ => (float)(((rng.NextDouble() * 2) - 1) * scale))];
    }

    private static double Reference(float[] h, float[] w, int[] labels)
    {
        double total = 0;
        int counted = 0;
        for (int t = 0; t < Tokens; t++)
        {
            if (labels[t] == -100)
            {
                continue;
            }

            var logits = new double[Vocab];
            for (int v = 0; v < Vocab; v++)
            {
                for (int e = 0; e < Dim; e++)
                {
                    logits[v] += (double)h[(t * Dim) + e] * w[(v * Dim) + e];
                }
            }

            double max = logits.Max();
            double lse = max + Math.Log(logits.Sum(l => Math.Exp(l - max)));
            total += lse - logits[labels[t]];
            counted++;
        }

        return counted == 0 ? 0 : total / counted;
    }

    [Theory]
    [InlineData(4)]    // several chunks, the last one partial
    [InlineData(1024)] // one chunk
    public void LossAndGradientsMatchFloat64(int chunk)
    {
        float[] h = Random(Tokens * Dim, 1, 2), w = Random(Vocab * Dim, 2);
        int[] labels = [3, -100, 0, 36, 5, 5, -100, 17, 2];
        Devices.Device device = fixture.Device;
        using DeviceTensor th = DeviceTensor.FromHost<float>(device, h, DType.F32, Tokens, Dim);
        using DeviceTensor tw = DeviceTensor.FromHost<float>(device, w, DType.F32, Vocab, Dim);
        using DeviceTensor dh = DeviceTensor.Allocate(device, DType.F32, Tokens, Dim);
        using DeviceTensor dw = DeviceTensor.Allocate(device, DType.F32, Vocab, Dim);
        dw.View<float>().MemSetToZero();
        double loss = CrossEntropy.ForwardBackward(th, tw, labels, dh, dw, chunk);
        double expected = Reference(h, w, labels);
        Assert.True(Math.Abs(loss - expected) <= 1e-5 * expected, $"loss {loss} vs {expected}");

        float[] gh = dh.ToHost<float>(), gw = dw.ToHost<float>();
        foreach ((string name, float[] values, float[] grads, Func<float[], double> f) in new (string, float[], float[], Func<float[], double>)[]
        {
            ("dh", h, gh, x => Reference(x, w, labels)),
            ("dw", w, gw, x => Reference(h, x, labels)),
        })
        {
            for (int i = 0; i < values.Length; i += 5)
            {
                float[] plus = (float[])values.Clone(), minus = (float[])values.Clone();
                plus[i] += 1e-3f;
                minus[i] -= 1e-3f;
                double fd = (f(plus) - f(minus)) / (plus[i] - minus[i]);
                Assert.True(Math.Abs(fd - grads[i]) <= 1e-3 * (Math.Abs(fd) + 0.01), $"{name}[{i}] fd {fd} vs {grads[i]}");
            }
        }

        // Ignored tokens get no gradient.
        Assert.All(gh[(1 * Dim)..(2 * Dim)], g => Assert.Equal(0f, g));
    }

    [Fact]
    public void LabelsOutsideTheVocabularyAreNamed()
    {
        using DeviceTensor h = DeviceTensor.Allocate(fixture.Device, DType.F32, 2, Dim);
        using DeviceTensor w = DeviceTensor.Allocate(fixture.Device, DType.F32, Vocab, Dim);
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => CrossEntropy.ForwardBackward(h, w, [1, Vocab], null, null));
        Assert.Contains("Label 1 is 37", e.Message);
    }
}

/// <summary><see cref="CrossEntropyTests{TDevice}"/> on the CPU accelerator with 2-lane warps.</summary>
public sealed class CrossEntropyTestsOnCpu(CpuDeviceFixture fixture) : CrossEntropyTests<CpuDeviceFixture>(fixture);

/// <summary><see cref="CrossEntropyTests{TDevice}"/> on the CPU accelerator with 32-lane warps.</summary>
public sealed class CrossEntropyTestsOnCpuWarp32(CpuWarp32DeviceFixture fixture) : CrossEntropyTests<CpuWarp32DeviceFixture>(fixture);

/// <summary><see cref="CrossEntropyTests{TDevice}"/> on CUDA (skipped without a CUDA device).</summary>
public sealed class CrossEntropyTestsOnCuda(CudaDeviceFixture fixture) : CrossEntropyTests<CudaDeviceFixture>(fixture);
