using QLoRA.Core;
using QLoRA.Core.Quantization;
using QLoRA.Runtime.Ops;
using QLoRA.Runtime.Tensors;
using QLoRA.Runtime.Training;

namespace QLoRA.Runtime.Tests;

/// <summary>
/// The optimizers on flat buffers: AdamW against torch.optim.AdamW's update written here in float64, 8-bit AdamW
/// against bitsandbytes' blockwise update written here step by step in float32 (codes compared exactly), paged forms
/// against their unpaged ones bit for bit, and state round trips.
/// </summary>
public abstract class OptimizerTests<TDevice>(TDevice fixture) : IClassFixture<TDevice>
    where TDevice : DeviceFixture
{
    // Not a multiple of 256: the last 8-bit block is short.
    private const int Count = 1000;

    private static float[] Random(int seed, double scale) { var rng = new Random(seed); return [.. Enumerable.Range(0, Count).Select(_ => (float)((rng.NextDouble() - 0.5) * 2 * scale))]; }

    private (DeviceTensor Values, DeviceTensor Gradients) Flat(float[] values, float[] gradients) =>
        (DeviceTensor.FromHost<float>(fixture.Device, values, DType.F32, Count), DeviceTensor.FromHost<float>(fixture.Device, gradients, DType.F32, Count));

    [Fact]
    public void AdamWFollowsTorchsUpdateInFloat64()
    {
        var options = new AdamWOptions(WeightDecay: 0.1);
        float[] p0 = Random(1, 1), p = (float[])p0.Clone();
        double[] reference = [.. p0.Select(v => (double)v)], m = new double[Count], v = new double[Count];
        (DeviceTensor values, DeviceTensor gradients) = Flat(p, new float[Count]);
        using (values)
        using (gradients)
        using (var optimizer = new AdamWOptimizer(fixture.Device, Count, options))
        {
            for (int step = 1; step <= 5; step++)
            {
                float[] g = Random(10 + step, 0.5);
                gradients.CopyFromHost<float>(g);
                optimizer.Step(values, gradients, step, 1e-2, 0.5f);
                for (int i = 0; i < Count; i++)
                {
                    // torch.optim.AdamW: decay, moments, bias-corrected step.
                    double gi = g[i] * 0.5;
                    reference[i] *= 1 - (1e-2 * 0.1);
                    m[i] = (0.9 * m[i]) + (0.1 * gi);
                    v[i] = (0.999 * v[i]) + (0.001 * gi * gi);
                    reference[i] -= 1e-2 * (m[i] / (1 - Math.Pow(0.9, step))) / (Math.Sqrt(v[i] / (1 - Math.Pow(0.999, step))) + 1e-8);
                }
            }

            float[] got = values.ToHost<float>();
            for (int i = 0; i < Count; i++)
            {
                // float32 state over five steps: a few units of roundoff of the update (lr-sized) plus of the value.
                Assert.True(Math.Abs(got[i] - reference[i]) <= (1e-5 * 1e-2) + (4 * 6e-8 * Math.Abs(reference[i])), $"{i}: {got[i]} vs {reference[i]}");
            }
        }
    }

    /// <summary>bitsandbytes' 8-bit blockwise AdamW step, in float32 as its kernel computes it.</summary>
    private static void EightBitReference(float[] p, float[] g, byte[] c1, byte[] c2, float[] a1, float[] a2, int step, float lr, float wd, float scale)
    {
        ReadOnlySpan<float> map1 = DynamicMap.Signed, map2 = DynamicMap.Unsigned;
        float beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f;
        double correction1 = 1 - Math.Pow(0.9, step), correction2 = Math.Sqrt(1 - Math.Pow(0.999, step));
        float stepSize = (float)(-lr * correction2 / correction1), c2f = (float)correction2;
        for (int block = 0; block * 256 < p.Length; block++)
        {
            int start = block * 256, end = Math.Min(p.Length, start + 256);
            var s1 = new float[end - start];
            var s2 = new float[end - start];
            float max1 = 0, max2 = 0;
            for (int i = start; i < end; i++)
            {
                float gi = g[i] * scale;
                s1[i - start] = (map1[c1[i]] * a1[block] * beta1) + ((1f - beta1) * gi);
                s2[i - start] = (map2[c2[i]] * a2[block] * beta2) + ((1f - beta2) * gi * gi);
                max1 = Math.Max(max1, Math.Abs(s1[i - start]));
                max2 = Math.Max(max2, Math.Abs(s2[i - start]));
                float updated = p[i] + (stepSize * (s1[i - start] / (MathF.Sqrt(s2[i - start]) + (c2f * eps))));
                p[i] = wd > 0 ? updated * (1f - (lr * wd)) : updated;
            }

            for (int i = start; i < end; i++)
            {
                int code = DynamicMap.Quantize(map1, s1[i - start] / max1);
                if (float.IsNegative(map1[code]) != float.IsNegative(s1[i - start]))
                {
                    code += s1[i - start] > 0 ? 1 : -1; // bitsandbytes keeps the first moment's sign
                }

                c1[i] = (byte)code;
                c2[i] = DynamicMap.Quantize(map2, s2[i - start] / max2);
            }

            a1[block] = max1;
            a2[block] = max2;
        }
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void EightBitAdamWIsBitsandbytesBlockwiseUpdateCodeForCode(bool paged)
    {
        float[] p = Random(2, 1);
        byte[] c1 = new byte[Count], c2 = new byte[Count];
        float[] a1 = new float[4], a2 = new float[4];
        (DeviceTensor values, DeviceTensor gradients) = Flat(p, new float[Count]);
        using (values)
        using (gradients)
        using (var optimizer = new EightBitAdamWOptimizer(fixture.Device, Count, new AdamWOptions(WeightDecay: 0.05), paged ? 300 : null))
        {
            Assert.Equal(paged, optimizer.Paged);
            for (int step = 1; step <= 6; step++)
            {
                float[] g = Random(20 + step, 0.3);
                for (int i = 7; i < Count; i += 37)
                {
                    // Moments far below their block's absmax land on the zero code: a negative one must keep its sign.
                    g[i] = -1e-9f * (1 + (i % 5));
                }

                gradients.CopyFromHost<float>(g);
                optimizer.Step(values, gradients, step, 1e-2, 0.7f);
                EightBitReference(p, g, c1, c2, a1, a2, step, 1e-2f, 0.05f, 0.7f);
            }

            IReadOnlyDictionary<string, TensorData> state = optimizer.ReadState();
            Assert.Equal(c1, state["state1"].Data);
            Assert.Equal(c2, state["state2"].Data);
            Assert.Equal(a1, state["absmax1"].ToSingle());
            Assert.Equal(a2, state["absmax2"].ToSingle());
            Assert.Equal(p, values.ToHost<float>());
            Assert.Contains(c1, c => c != c1[0]); // the codes vary: the comparison means something

            // A checkpoint's state restores exactly: the next step from it equals the next step of the original.
            using var restored = new EightBitAdamWOptimizer(fixture.Device, Count, new AdamWOptions(WeightDecay: 0.05), paged ? 300 : null);
            restored.WriteState(state);
            using DeviceTensor copy = DeviceTensor.FromHost<float>(fixture.Device, p, DType.F32, Count);
            optimizer.Step(values, gradients, 7, 1e-2, 1f);
            restored.Step(copy, gradients, 7, 1e-2, 1f);
            Assert.Equal(values.ToHost<float>(), copy.ToHost<float>());
            Assert.Throws<ArgumentException>(() => restored.WriteState(new Dictionary<string, TensorData> { ["state1"] = state["state1"] }));
        }
    }

    [Fact]
    public void EightBitStateIsAQuarterOfAdamWsAndPagingKeepsDeviceStateToAPage()
    {
        using var adamw = new AdamWOptimizer(fixture.Device, 1 << 16, new AdamWOptions());
        using var eightBit = new EightBitAdamWOptimizer(fixture.Device, 1 << 16, new AdamWOptions());
        using var paged = new EightBitAdamWOptimizer(fixture.Device, 1 << 16, new AdamWOptions(), pageElements: 4096);
        Assert.Equal(8L << 16, adamw.DeviceStateBytes);
        Assert.Equal((2L << 16) + (8L << 8), eightBit.DeviceStateBytes);
        Assert.Equal(2 * ((2 * 4096) + (8 * 16)), paged.DeviceStateBytes);
        Assert.Equal(eightBit.DeviceStateBytes + paged.DeviceStateBytes, paged.StateBytes);
    }
}

/// <summary><see cref="OptimizerTests{TDevice}"/> on the CPU accelerator.</summary>
public sealed class OptimizerTestsOnCpu(CpuDeviceFixture fixture) : OptimizerTests<CpuDeviceFixture>(fixture);

/// <summary><see cref="OptimizerTests{TDevice}"/> on the CPU accelerator with 32-lane warps.</summary>
public sealed class OptimizerTestsOnCpuWarp32(CpuWarp32DeviceFixture fixture) : OptimizerTests<CpuWarp32DeviceFixture>(fixture);

/// <summary><see cref="OptimizerTests{TDevice}"/> on CUDA (skipped without a CUDA device).</summary>
public sealed class OptimizerTestsOnCuda(CudaDeviceFixture fixture) : OptimizerTests<CudaDeviceFixture>(fixture);
