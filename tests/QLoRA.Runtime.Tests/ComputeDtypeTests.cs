using QLoRA.Core;
using QLoRA.Core.Quantization;
using QLoRA.Runtime.Layers;
using QLoRA.Runtime.Ops;
using QLoRA.Runtime.Tensors;
using Device = QLoRA.Runtime.Devices.Device;

namespace QLoRA.Runtime.Tests;

/// <summary>
/// Every kernel in BF16 and F16. Kernels load narrow elements exactly, compute and sum in float32 and round once on
/// store, so on inputs representable in the narrow dtype each narrow output must equal the float32 kernel's output
/// (itself checked against float64 in the other test classes) rounded to nearest even — bit for bit — and every float32
/// output (statistics, parameter gradients) must be identical. Ops that round an intermediate (the loss's logit
/// gradient, LoRA's rank-r product) are checked against float64 with a bound of a few unit roundoffs of Σ|terms|.
/// Outputs start poisoned with NaN so an unwritten element fails.
/// </summary>
public abstract class ComputeDtypeTests<TDevice>(TDevice fixture) : IClassFixture<TDevice>
    where TDevice : DeviceFixture
{
    private Device Device => fixture.Device;

    private DeviceTensor Up(float[] values, DType dtype, params long[] shape) => DeviceTensor.FromSingle(Device, values, dtype, shape);

    private DeviceTensor Poisoned(DType dtype, params long[] shape) =>
        Up(Enumerable.Repeat(float.NaN, (int)shape.Aggregate(1L, (a, b) => a * b)).ToArray(), dtype, shape);

    /// <summary>Runs <paramref name="run"/> in F32 and in <paramref name="dtype"/>; it returns its outputs as float32 host arrays.</summary>
    private static void AssertRoundedFloat32(DType dtype, Func<DType, (string Name, float[] Values, bool Narrow)[]> run)
    {
        var wide = run(DType.F32);
        var narrow = run(dtype);
        for (int o = 0; o < wide.Length; o++)
        {
            (string name, float[] expectedWide, bool isNarrow) = wide[o];
            float[] got = narrow[o].Values;
            Assert.Equal(expectedWide.Length, got.Length);
            for (int i = 0; i < got.Length; i++)
            {
                Assert.False(float.IsNaN(expectedWide[i]), $"{name}[{i}] was not written in F32");
                float expected = isNarrow ? Narrow.Round(expectedWide[i], dtype) : expectedWide[i];
                Assert.True(BitConverter.SingleToUInt32Bits(expected) == BitConverter.SingleToUInt32Bits(got[i]), $"{dtype} {name}[{i}]: {got[i]:R} vs {expected:R} (float32 {expectedWide[i]:R})");
            }
        }
    }

    [Theory]
    [InlineData(DType.BF16)]
    [InlineData(DType.F16)]
    public void ElementwiseOpsAndEmbedding(DType dtype)
    {
        const int rows = 7, dim = 45, vocab = 11;
        float[] a = Narrow.Random(rows * dim, 1, dtype, 3), b = Narrow.Random(rows * dim, 2, dtype, 3), bias = Narrow.Random(dim, 3, DType.F32);
        float[] table = Narrow.Random(vocab * dim, 4, dtype);
        int[] ids = [3, 0, 10, 3, 7, 3, 1];
        AssertRoundedFloat32(dtype, dt =>
        {
            using DeviceTensor ta = Up(a, dt, rows, dim), tb = Up(b, dt, rows, dim), sum = Poisoned(dt, rows, dim), tBias = Up(bias, DType.F32, dim), biased = Up(b, dt, rows, dim);
            using DeviceTensor tTable = Up(table, dt, vocab, dim), gathered = Poisoned(dt, rows, dim), dTable = Up(new float[vocab * dim], DType.F32, vocab, dim);
            Elementwise.Add(ta, tb, sum);
            Elementwise.AddBias(biased, tBias);
            Elementwise.Embedding(tTable, ids, gathered);
            Elementwise.EmbeddingBackward(ta, ids, dTable);
            return [("a+b", sum.ToSingle(), true), ("b+bias", biased.ToSingle(), true), ("gather", gathered.ToSingle(), true), ("dTable", dTable.ToSingle(), false)];
        });
    }

    [Theory]
    [InlineData(DType.BF16)]
    [InlineData(DType.F16)]
    public void RmsNormRopeAndSwiGlu(DType dtype)
    {
        const int tokens = 5, heads = 3, headDim = 10, dim = heads * headDim;
        float[] x = Narrow.Random(tokens * dim, 5, dtype, 2), dy = Narrow.Random(tokens * dim, 6, dtype), w = Narrow.Random(dim, 7, DType.F32);
        float[] invFreq = RopeFrequencies.Compute(new QLoRA.Core.HuggingFace.RopeParameters(QLoRA.Core.HuggingFace.RopeType.Default, 10000), headDim);
        AssertRoundedFloat32(dtype, dt =>
        {
            using DeviceTensor tx = Up(x, dt, tokens, dim), tdy = Up(dy, dt, tokens, dim), tw = Up(w, DType.F32, dim);
            using DeviceTensor y = Poisoned(dt, tokens, dim), inv = Poisoned(DType.F32, tokens), dx = Poisoned(dt, tokens, dim), dw = Poisoned(DType.F32, dim);
            RmsNorm.Forward(tx, tw, y, inv, 1e-5f);
            RmsNorm.Backward(tx, tw, tdy, inv, dx, dw);
            using DeviceTensor positions = DeviceTensor.FromHost<int>(Device, [4, 0, 1, 2, 9], DType.I32, tokens), freq = Up(invFreq, DType.F32, headDim / 2);
            using DeviceTensor rotated = Up(x, dt, tokens, heads, headDim), back = Up(dy, dt, tokens, heads, headDim);
            Rope.Forward(rotated, positions, freq);
            Rope.Backward(back, positions, freq);
            using DeviceTensor act = Poisoned(dt, tokens, dim), dGate = Poisoned(dt, tokens, dim), dUp = Poisoned(dt, tokens, dim);
            SwiGlu.Forward(tx, tdy, act);
            SwiGlu.Backward(tx, tdy, tx, dGate, dUp);
            return [("norm.y", y.ToSingle(), true), ("norm.inv", inv.ToSingle(), false), ("norm.dx", dx.ToSingle(), true), ("norm.dw", dw.ToSingle(), false),
                ("rope", rotated.ToSingle(), true), ("rope.back", back.ToSingle(), true), ("swiglu", act.ToSingle(), true), ("swiglu.dg", dGate.ToSingle(), true), ("swiglu.du", dUp.ToSingle(), true)];
        });
    }

    [Theory]
    [InlineData(DType.BF16, 0)]
    [InlineData(DType.F16, 3)]
    public void AttentionForwardAndBackward(DType dtype, int window)
    {
        const int tokens = 9, heads = 4, kvHeads = 2, d = 6;
        int[] boundaries = [0, 4, 9];
        float[] q = Narrow.Random(tokens * heads * d, 8, dtype), k = Narrow.Random(tokens * kvHeads * d, 9, dtype), v = Narrow.Random(tokens * kvHeads * d, 10, dtype);
        float[] dO = Narrow.Random(tokens * heads * d, 11, dtype);
        AssertRoundedFloat32(dtype, dt =>
        {
            using DeviceTensor tq = Up(q, dt, tokens, heads, d), tk = Up(k, dt, tokens, kvHeads, d), tv = Up(v, dt, tokens, kvHeads, d);
            using DeviceTensor o = Poisoned(dt, tokens, heads, d), lse = Poisoned(DType.F32, tokens, heads);
            Attention.Forward(tq, tk, tv, boundaries, o, lse, window);
            // The backward takes the forward's output; feed both runs the same (rounded) O so only rounding differs.
            using DeviceTensor oIn = Up(Narrow.Round(o.ToSingle(), dtype), dt, tokens, heads, d), tdO = Up(dO, dt, tokens, heads, d);
            using DeviceTensor dq = Poisoned(dt, tokens, heads, d), dk = Poisoned(dt, tokens, kvHeads, d), dv = Poisoned(dt, tokens, kvHeads, d);
            Attention.Backward(tq, tk, tv, boundaries, oIn, lse, tdO, dq, dk, dv, window);
            return [("o", o.ToSingle(), true), ("lse", lse.ToSingle(), false), ("dq", dq.ToSingle(), true), ("dk", dk.ToSingle(), true), ("dv", dv.ToSingle(), true)];
        });
    }

    [Theory]
    [InlineData(DType.BF16, false, true)]
    [InlineData(DType.BF16, true, false)]
    [InlineData(DType.F16, false, false)]
    [InlineData(DType.F16, true, true)]
    public void GemmWithNarrowOrFloat32Output(DType dtype, bool transposeA, bool transposeB)
    {
        const int m = 13, n = 10, k = 37;
        float[] a = Narrow.Random(m * k, 12, dtype), b = Narrow.Random(k * n, 13, dtype), c0 = Narrow.Random(m * n, 14, dtype);
        long[] aShape = transposeA ? [k, m] : [m, k], bShape = transposeB ? [n, k] : [k, n];
        AssertRoundedFloat32(dtype, dt =>
        {
            using DeviceTensor ta = Up(a, dt, aShape), tb = Up(b, dt, bShape), narrowC = Up(c0, dt, m, n), wideC = Up(c0, DType.F32, m, n);
            Gemm.Multiply(ta, tb, narrowC, transposeA, transposeB, alpha: 0.75f, beta: 0.5f);
            Gemm.Multiply(ta, tb, wideC, transposeA, transposeB, alpha: 0.75f, beta: 0.5f);
            return [("C", narrowC.ToSingle(), true), ("C (F32 output)", wideC.ToSingle(), false)];
        });
    }

    [Theory]
    [InlineData(DType.BF16, true)]
    [InlineData(DType.F16, false)]
    public void FourBitGemvAndGemm(DType dtype, bool doubleQuant)
    {
        const int outFeatures = 24, inFeatures = 96, m = 5;
        var weight = QuantizedTensor.Quantize(Narrow.Random(outFeatures * inFeatures, 15, DType.F32), [outFeatures, inFeatures], new QuantizationOptions(QuantType.Nf4, 64, doubleQuant));
        float[] x = Narrow.Random(m * inFeatures, 16, dtype), dy = Narrow.Random(m * outFeatures, 17, dtype);
        using var packed = DeviceQuantizedTensor.Upload(Device, weight);
        AssertRoundedFloat32(dtype, dt =>
        {
            using DeviceTensor tx = Up(x, dt, m, inFeatures), tdy = Up(dy, dt, m, outFeatures);
            using DeviceTensor gemv = Poisoned(dt, 3, outFeatures), y = Poisoned(dt, m, outFeatures), dx = Poisoned(dt, m, inFeatures);
            packed.Gemv(tx.Rows(0, 3), gemv);
            packed.Multiply(tx, y, transposeWeight: true);
            packed.Multiply(tdy, dx, transposeWeight: false);
            return [("gemv", gemv.ToSingle(), true), ("y", y.ToSingle(), true), ("dx", dx.ToSingle(), true)];
        });
    }

    [Theory]
    [InlineData(DType.BF16)]
    [InlineData(DType.F16)]
    public void CrossEntropyMatchesFloat64WithinRoundingOfTheLogitGradient(DType dtype)
    {
        const int tokens = 7, dim = 12, vocab = 29;
        float[] h = Narrow.Random(tokens * dim, 18, dtype, 2), w = Narrow.Random(vocab * dim, 19, dtype);
        int[] labels = [4, -100, 0, 28, 11, 4, 7];
        using DeviceTensor th = Up(h, dtype, tokens, dim), tw = Up(w, dtype, vocab, dim);
        using DeviceTensor dh = Poisoned(dtype, tokens, dim), dw = Up(new float[vocab * dim], DType.F32, vocab, dim);
        double loss = CrossEntropy.ForwardBackward(th, tw, labels, dh, dw, chunkTokens: 3);

        // Float64: p = softmax(h Wᵀ), dz = (p − onehot)/counted, dh = dz W, dW = dzᵀ h.
        int counted = labels.Count(l => l != -100);
        var dz = new double[tokens, vocab];
        double expectedLoss = 0;
        for (int t = 0; t < tokens; t++)
        {
            if (labels[t] == -100)
            {
                continue;
            }

            double[] z = [.. Enumerable.Range(0, vocab).Select(j => Enumerable.Range(0, dim).Sum(e => (double)h[(t * dim) + e] * w[(j * dim) + e]))];
            double max = z.Max(), lse = max + Math.Log(z.Sum(v => Math.Exp(v - max)));
            expectedLoss += (lse - z[labels[t]]) / counted;
            for (int j = 0; j < vocab; j++)
            {
                dz[t, j] = (Math.Exp(z[j] - lse) - (j == labels[t] ? 1 : 0)) / counted;
            }
        }

        // The logits are float32 from exact inputs: the loss is float32-accurate whatever the compute dtype.
        Assert.True(Math.Abs(loss - expectedLoss) <= 1e-5 * expectedLoss, $"loss {loss} vs {expectedLoss}");
        double u = Narrow.UnitRoundoff(dtype);
        float[] gotDh = dh.ToSingle(), gotDw = dw.ToSingle();
        for (int t = 0; t < tokens; t++)
        {
            for (int e = 0; e < dim; e++)
            {
                double expected = 0, scale = 0;
                for (int j = 0; j < vocab; j++)
                {
                    expected += dz[t, j] * w[(j * dim) + e];
                    scale += Math.Abs(dz[t, j] * w[(j * dim) + e]);
                }

                // dz rounded once (u), then dh rounded once (u): 2u of the terms' magnitude, plus float32 sums.
                Assert.True(Math.Abs(gotDh[(t * dim) + e] - expected) <= (2 * u * (scale + Math.Abs(expected))) + 1e-7, $"dh[{t},{e}] {gotDh[(t * dim) + e]} vs {expected}");
            }
        }

        for (int j = 0; j < vocab; j++)
        {
            for (int e = 0; e < dim; e++)
            {
                double expected = 0, scale = 0;
                for (int t = 0; t < tokens; t++)
                {
                    expected += dz[t, j] * h[(t * dim) + e];
                    scale += Math.Abs(dz[t, j] * h[(t * dim) + e]);
                }

                Assert.True(Math.Abs(gotDw[(j * dim) + e] - expected) <= (u * scale) + 1e-7, $"dW[{j},{e}] {gotDw[(j * dim) + e]} vs {expected}");
            }
        }

        // A narrow hidden state with a float32 lm_head is a dtype mismatch, named.
        using DeviceTensor wideW = Up(w, DType.F32, vocab, dim);
        Assert.Contains("weight is F32", Assert.Throws<ArgumentException>(() => CrossEntropy.ForwardBackward(th, wideW, labels, null, null)).Message);
    }

    [Theory]
    [InlineData(DType.BF16)]
    [InlineData(DType.F16)]
    public void QuantizedLinearWithLoraMatchesFloat64WithinNarrowRounding(DType dtype)
    {
        const int tokens = 6, inFeatures = 64, outFeatures = 20, rank = 4;
        const float scaling = 2f;
        var weight = QuantizedTensor.Quantize(Narrow.Random(outFeatures * inFeatures, 20, DType.F32, 0.2), [outFeatures, inFeatures]);
        float[] w = weight.DequantizeToSingle();
        float[] a = Narrow.Random(rank * inFeatures, 21, DType.F32, 0.3), b = Narrow.Random(outFeatures * rank, 22, DType.F32, 0.3);
        float[] x = Narrow.Random(tokens * inFeatures, 23, dtype), dy = Narrow.Random(tokens * outFeatures, 24, dtype);
        using var layer = new QuantizedLinear(Device, DeviceQuantizedTensor.Upload(Device, weight)) { Lora = new LoraSlot(Device, a, b, rank, inFeatures, outFeatures, scaling) };
        using DeviceTensor tx = Up(x, dtype, tokens, inFeatures), ty = Poisoned(dtype, tokens, outFeatures);
        using DeviceTensor tdy = Up(dy, dtype, tokens, outFeatures), tdx = Poisoned(dtype, tokens, inFeatures);
        layer.Forward(tx, ty);
        layer.Backward(tx, tdy, tdx);
        float[] y = ty.ToSingle(), dx = tdx.ToSingle(), dA = layer.Lora!.GradA.ToSingle(), dB = layer.Lora.GradB.ToSingle();

        // Float64 with A and B as the float32 masters: xa = x Aᵀ, y = x Wᵀ + s xa Bᵀ, dyB = dy B, dx = dy W + s dyB A,
        // dB = s dyᵀ xa, dA = s dyBᵀ x. The narrow path rounds A, B, xa and dyB once each: a few u of Σ|terms|.
        double u = Narrow.UnitRoundoff(dtype), bound = 6 * u;
        double[,] xa = new double[tokens, rank], dyB = new double[tokens, rank];
        for (int t = 0; t < tokens; t++)
        {
            for (int r = 0; r < rank; r++)
            {
                for (int i = 0; i < inFeatures; i++)
                {
                    xa[t, r] += (double)x[(t * inFeatures) + i] * a[(r * inFeatures) + i];
                }

                for (int o = 0; o < outFeatures; o++)
                {
                    dyB[t, r] += (double)dy[(t * outFeatures) + o] * b[(o * rank) + r];
                }
            }
        }

        void Check(string name, float got, double expected, double scale) =>
            Assert.True(Math.Abs(got - expected) <= (bound * scale) + 1e-6, $"{dtype} {name}: {got} vs {expected} (Σ|terms| {scale})");

        for (int t = 0; t < tokens; t++)
        {
            for (int o = 0; o < outFeatures; o++)
            {
                double expected = 0, scale = 0;
                for (int i = 0; i < inFeatures; i++)
                {
                    double term = (double)x[(t * inFeatures) + i] * w[(o * inFeatures) + i];
                    expected += term;
                    scale += Math.Abs(term);
                }

                for (int r = 0; r < rank; r++)
                {
                    double term = scaling * xa[t, r] * b[(o * rank) + r];
                    expected += term;
                    scale += Enumerable.Range(0, inFeatures).Sum(i => Math.Abs(scaling * x[(t * inFeatures) + i] * a[(r * inFeatures) + i] * b[(o * rank) + r]));
                }

                Check($"y[{t},{o}]", y[(t * outFeatures) + o], expected, scale);
            }

            for (int i = 0; i < inFeatures; i++)
            {
                double expected = 0, scale = 0;
                for (int o = 0; o < outFeatures; o++)
                {
                    double term = (double)dy[(t * outFeatures) + o] * w[(o * inFeatures) + i];
                    expected += term;
                    scale += Math.Abs(term);
                }

                for (int r = 0; r < rank; r++)
                {
                    expected += scaling * dyB[t, r] * a[(r * inFeatures) + i];
                    scale += Enumerable.Range(0, outFeatures).Sum(o => Math.Abs(scaling * dy[(t * outFeatures) + o] * b[(o * rank) + r] * a[(r * inFeatures) + i]));
                }

                Check($"dx[{t},{i}]", dx[(t * inFeatures) + i], expected, scale);
            }
        }

        for (int r = 0; r < rank; r++)
        {
            for (int i = 0; i < inFeatures; i++)
            {
                double expected = Enumerable.Range(0, tokens).Sum(t => scaling * dyB[t, r] * x[(t * inFeatures) + i]);
                double scale = Enumerable.Range(0, tokens).Sum(t => Enumerable.Range(0, outFeatures).Sum(o => Math.Abs(scaling * dy[(t * outFeatures) + o] * b[(o * rank) + r] * x[(t * inFeatures) + i])));
                Check($"dA[{r},{i}]", dA[(r * inFeatures) + i], expected, scale);
            }

            for (int o = 0; o < outFeatures; o++)
            {
                double expected = Enumerable.Range(0, tokens).Sum(t => scaling * dy[(t * outFeatures) + o] * xa[t, r]);
                double scale = Enumerable.Range(0, tokens).Sum(t => Enumerable.Range(0, inFeatures).Sum(i => Math.Abs(scaling * dy[(t * outFeatures) + o] * x[(t * inFeatures) + i] * a[(r * inFeatures) + i])));
                Check($"dB[{o},{r}]", dB[(o * rank) + r], expected, scale);
            }
        }
    }

    [Fact]
    public void TheCpuAcceleratorDefaultsToFloat32AndNarrowWeightsLoadInTheComputeDtype()
    {
        using Device cpu = Device.Cpu();
        // F32 unless QLORA_COMPUTE_DTYPE says otherwise (GPU scripts set it for whole runs).
        Assert.Equal(Device.ParseComputeDtype(Environment.GetEnvironmentVariable(Device.ComputeDtypeVariable)) ?? DType.F32, cpu.ComputeDtype);
        cpu.ComputeDtype = DType.BF16;
        Assert.Equal(DType.BF16, cpu.ComputeDtype);
        Assert.Equal(DType.F16, Device.ParseComputeDtype(" F16 "));
        Assert.Equal(DType.BF16, Device.ParseComputeDtype("bfloat16"));
        Assert.Null(Device.ParseComputeDtype(""));
        Assert.Contains("QLORA_COMPUTE_DTYPE='fp8'", Assert.Throws<QLoRA.Runtime.Devices.DeviceNotAvailableException>(() => Device.ParseComputeDtype("fp8")).Message);
    }
}

/// <summary><see cref="ComputeDtypeTests{TDevice}"/> on the CPU accelerator with 2-lane warps.</summary>
public sealed class ComputeDtypeTestsOnCpu(CpuDeviceFixture fixture) : ComputeDtypeTests<CpuDeviceFixture>(fixture);

/// <summary><see cref="ComputeDtypeTests{TDevice}"/> on the CPU accelerator with 32-lane warps.</summary>
public sealed class ComputeDtypeTestsOnCpuWarp32(CpuWarp32DeviceFixture fixture) : ComputeDtypeTests<CpuWarp32DeviceFixture>(fixture);

/// <summary><see cref="ComputeDtypeTests{TDevice}"/> on CUDA (skipped without a CUDA device).</summary>
public sealed class ComputeDtypeTestsOnCuda(CudaDeviceFixture fixture) : ComputeDtypeTests<CudaDeviceFixture>(fixture);
