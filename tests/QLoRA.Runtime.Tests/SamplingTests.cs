using QLoRA.Core;
using QLoRA.Runtime.Generation;
using QLoRA.Runtime.Kernels;
using QLoRA.Runtime.Tensors;

namespace QLoRA.Runtime.Tests;

/// <summary>
/// The device sampler against plain references: kept sets of top-k / top-p / min-p computed by sorting (Hugging Face's
/// warpers, written out), penalties by their definitions, greedy ties, and the draws' distribution by a chi-square test.
/// </summary>
public abstract class SamplingTests<TDevice>(TDevice fixture) : IClassFixture<TDevice>
    where TDevice : DeviceFixture
{
    private const int Vocab = 300;

    private static float[] Logits(int seed, int rows = 1)
    {
        var rng = new Random(seed);
        return [.. Enumerable.Range(0, rows * Vocab).Select(_ => (float)((rng.NextDouble() * 8) - 4))];
    }

    private (int[] Ids, float[] LogProbs, float[] Processed) Run(float[] logits, SamplingOptions options, ulong seed = 1, int step = 0, int[]? prompt = null, int[]? generated = null)
    {
        using var sampler = new Sampler(fixture.Device, Vocab, 4, 2);
        int slot = -1;
        if (prompt is not null || generated is not null)
        {
            slot = 1;
            sampler.ResetSlot(slot, prompt ?? []);
            foreach (int id in generated ?? [])
            {
                // Count a generated token the way the engine does: by sampling it (a bias of +∞ is not allowed; +1e4 is enough).
                using DeviceTensor one = DeviceTensor.FromHost<float>(fixture.Device, new float[Vocab], DType.F32, 1, Vocab);
                var force = new SamplingOptions { Temperature = 0, LogitBias = new Dictionary<int, float> { [id] = 1e4f } };
                Assert.Equal(id, sampler.Sample(one, [new SampleRow(force, 0, 0, slot)]).Ids[0]);
            }
        }

        using DeviceTensor t = DeviceTensor.FromHost<float>(fixture.Device, logits, DType.F32, 1, Vocab);
        (int[] ids, float[] logProbs) = sampler.Sample(t, [new SampleRow(options, seed, step, slot)]);
        return (ids, logProbs, sampler.ProcessedRow(0));
    }

    private static HashSet<int> Kept(float[] processed) => [.. Enumerable.Range(0, Vocab).Where(v => !float.IsNegativeInfinity(processed[v]))];

    // Hugging Face's warpers, written out with a sort: temperature, top-k, top-p, min-p.
    private static HashSet<int> ReferenceKept(float[] logits, double temperature, int topK, double topP, double minP)
    {
        double[] x = [.. logits.Select(l => l / temperature)];
        var kept = Enumerable.Range(0, Vocab).ToHashSet();
        if (topK > 0)
        {
            double kth = x.OrderByDescending(v => v).ElementAt(topK - 1);
            kept.RemoveWhere(v => x[v] < kth);
        }

        double Prob(int v, HashSet<int> set) => Math.Exp(x[v] - set.Max(j => x[j])) / set.Sum(j => Math.Exp(x[j] - set.Max(i => x[i])));
        if (topP < 1)
        {
            // Ascending sort; remove tokens whose cumulative probability is ≤ 1 − p (the most likely one always stays).
            var set = kept.ToHashSet();
            double[] p = new double[Vocab];
            foreach (int v in set)
            {
                p[v] = Prob(v, set);
            }

            double cumulative = 0;
            foreach (int v in set.OrderBy(v => x[v]).ToArray()[..^1])
            {
                cumulative += p[v];
                if (cumulative <= 1 - topP)
                {
                    kept.Remove(v);
                }
            }
        }

        if (minP > 0)
        {
            double max = kept.Max(v => x[v]);
            kept.RemoveWhere(v => Math.Exp(x[v] - max) < minP);
        }

        return kept;
    }

    [Theory]
    [InlineData(1.0, 20, 1.0, 0.0)]
    [InlineData(0.7, 0, 0.9, 0.0)]
    [InlineData(1.3, 0, 1.0, 0.05)]
    [InlineData(1.0, 50, 0.8, 0.02)]
    [InlineData(0.5, 1, 1.0, 0.0)]
    public void FiltersKeepExactlyTheReferenceSets(double temperature, int topK, double topP, double minP)
    {
        float[] logits = Logits(7);
        var options = new SamplingOptions { Temperature = temperature, TopK = topK, TopP = topP, MinP = minP };
        (int[] ids, float[] logProbs, float[] processed) = Run(logits, options);
        HashSet<int> expected = ReferenceKept(logits, temperature, topK, topP, minP);
        Assert.Equal(expected.Order(), Kept(processed).Order());
        Assert.Contains(ids[0], expected);

        // The reported log-probability is the raw model's: logit − logsumexp(logits).
        double max = logits.Max(), lse = max + Math.Log(logits.Sum(l => Math.Exp(l - max)));
        Assert.True(Math.Abs(logProbs[0] - (logits[ids[0]] - lse)) <= 1e-5, $"{logProbs[0]} vs {logits[ids[0]] - lse}");
    }

    [Fact]
    public void TopKKeepsTiesAtTheThreshold()
    {
        float[] logits = Logits(3);
        logits[10] = logits[11] = logits[12] = 9f; // three tied maxima with k = 2: all three stay, as HF's "< k-th value" rule
        (_, _, float[] processed) = Run(logits, new SamplingOptions { TopK = 2 });
        Assert.Equal([10, 11, 12], Kept(processed).Order());
    }

    [Fact]
    public void GreedyTakesTheLowestIdOnTies()
    {
        float[] logits = Logits(4);
        logits[250] = logits[31] = logits[77] = 10f;
        Assert.Equal(31, Run(logits, SamplingOptions.Greedy).Ids[0]);
    }

    [Fact]
    public void PenaltiesAndBiasAsDefined()
    {
        float[] logits = Logits(5);
        int[] prompt = [3, 4, 5, 5];
        int[] generated = [5, 9, 9, 9];
        var options = new SamplingOptions
        {
            Temperature = 1, RepetitionPenalty = 1.3, PresencePenalty = 0.5, FrequencyPenalty = 0.25,
            LogitBias = new Dictionary<int, float> { [100] = 2.5f, [101] = float.NegativeInfinity },
        };
        (int[] ids, _, float[] processed) = Run(logits, options, prompt: prompt, generated: generated);
        for (int v = 0; v < Vocab; v++)
        {
            double x = logits[v];
            bool seen = prompt.Contains(v) || generated.Contains(v);
            int times = generated.Count(g => g == v);
            if (seen)
            {
                x = x > 0 ? x / 1.3 : x * 1.3;
            }

            x -= (times > 0 ? 0.5 : 0) + (0.25 * times);
            x += v == 100 ? 2.5 : v == 101 ? double.NegativeInfinity : 0;
            Assert.True(double.IsNegativeInfinity(x) ? float.IsNegativeInfinity(processed[v]) : Math.Abs(processed[v] - x) <= 1e-5 * (1 + Math.Abs(x)), $"[{v}] {processed[v]} vs {x}");
        }

        Assert.NotEqual(101, ids[0]);
    }

    [Fact]
    public void SameSeedSameDrawOtherSeedsCoverTheDistribution()
    {
        // Six tokens with probabilities ∝ e^logit; 3,000 draws over seeds; χ² with 5 degrees of freedom below 20.5
        // (p = 0.001): a wrong CDF walk, off-by-one or biased generator fails it.
        float[] logits = new float[Vocab];
        Array.Fill(logits, float.NegativeInfinity);
        float[] six = [0.1f, 1.2f, -0.5f, 0.8f, 0f, 2f];
        for (int i = 0; i < six.Length; i++)
        {
            logits[(i * 37) + 5] = six[i];
        }

        using var sampler = new Sampler(fixture.Device, Vocab, 4, 1);
        using DeviceTensor t = DeviceTensor.FromHost<float>(fixture.Device, [.. logits, .. logits, .. logits, .. logits], DType.F32, 4, Vocab);
        var counts = new double[six.Length];
        const int draws = 3000;
        var options = new SamplingOptions { Temperature = 1 };
        for (int d = 0; d < draws; d += 4)
        {
            int[] ids = sampler.Sample(t, [.. Enumerable.Range(d, 4).Select(s => new SampleRow(options, (ulong)s * 7919, s % 5, -1))]).Ids;
            foreach (int id in ids)
            {
                Assert.Equal(5, id % 37);
                counts[(id - 5) / 37]++;
            }
        }

        double z = six.Sum(v => Math.Exp(v));
        double chi2 = six.Select((v, i) => Math.Pow(counts[i] - (draws * Math.Exp(v) / z), 2) / (draws * Math.Exp(v) / z)).Sum();
        Assert.True(chi2 < 20.5, $"χ² = {chi2:F2}, counts {string.Join(", ", counts)}");

        float[] random = Logits(9);
        var sampled = new SamplingOptions { Temperature = 0.9, TopP = 0.95 };
        Assert.Equal(Run(random, sampled, seed: 42, step: 3).Ids[0], Run(random, sampled, seed: 42, step: 3).Ids[0]);
    }

    [Fact]
    public void UniformIsUniform()
    {
        // The generator alone: 10 bins of 20,000 draws, χ² (9 dof) below 27.9 (p = 0.001).
        var bins = new double[10];
        for (int i = 0; i < 20000; i++)
        {
            bins[(int)(SamplingKernels.Uniform(12345, i) * 10)]++;
        }

        Assert.True(bins.Sum(b => Math.Pow(b - 2000, 2) / 2000) < 27.9, string.Join(", ", bins));
    }
}

/// <summary><see cref="SamplingTests{TDevice}"/> on the CPU accelerator.</summary>
public sealed class SamplingTestsOnCpu(CpuDeviceFixture fixture) : SamplingTests<CpuDeviceFixture>(fixture);

/// <summary><see cref="SamplingTests{TDevice}"/> with 32-lane groups (the GPU's reduction trees at full width).</summary>
public sealed class SamplingTestsOnCpuWarp32(CpuWarp32DeviceFixture fixture) : SamplingTests<CpuWarp32DeviceFixture>(fixture);

/// <summary><see cref="SamplingTests{TDevice}"/> on CUDA (skipped without a CUDA device).</summary>
public sealed class SamplingTestsOnCuda(CudaDeviceFixture fixture) : SamplingTests<CudaDeviceFixture>(fixture);
