using QLoRA.Core;
using QLoRA.Runtime.Engine;
using QLoRA.Runtime.Generation;
using QLoRA.Runtime.Models;
using QLoRA.Runtime.Ops;
using QLoRA.Runtime.Tensors;

namespace QLoRA.Runtime.Tests;

/// <summary>Paged attention against the packed attention op, with pages handed out of order.</summary>
public abstract class PagedAttentionTests<TDevice>(TDevice fixture) : IClassFixture<TDevice>
    where TDevice : DeviceFixture
{
    private static float[] Random(int count, int seed)
    {
        var rng = new Random(seed);
        return [.. Enumerable.Range(0, count).Select(_ => (float)((rng.NextDouble() * 2) - 1))];
    }

    [Theory]
    [InlineData(0)]
    [InlineData(3)]
    public void PagedAttentionEqualsPackedAttention(int window)
    {
        var device = fixture.Device;
        const int heads = 4, kvHeads = 2, d = 16, pageTokens = 4;
        int[] lengths = [7, 1, 10];
        int tokens = lengths.Sum();
        float[] q = Random(tokens * heads * d, 1), k = Random(tokens * kvHeads * d, 2), v = Random(tokens * kvHeads * d, 3);
        using var cache = new KvCache(device, 1, kvHeads, d, DType.F32, pages: 12, pageTokens, slidingWindow: window);

        // Take pages in a scrambled order, so a sequence's pages are not contiguous in the pool.
        var sequences = lengths.Select(_ => new KvSequence()).ToArray();
        var decoy = new KvSequence();
        Assert.True(cache.TryReserve(decoy, 3 * pageTokens));
        for (int s = 0; s < sequences.Length; s++)
        {
            Assert.True(cache.TryReserve(sequences[s], lengths[s]));
        }

        cache.Release(decoy);
        int maxPages = 4;
        var tables = new int[sequences.Length * maxPages];
        Array.Fill(tables, -1);
        var rowSequence = new int[tokens];
        var rowPosition = new int[tokens];
        int row = 0;
        for (int s = 0; s < sequences.Length; s++)
        {
            sequences[s].PageTable.CopyTo(tables.AsSpan(s * maxPages));
            for (int i = 0; i < lengths[s]; i++, row++)
            {
                rowSequence[row] = s;
                rowPosition[row] = i;
            }
        }

        using DeviceTensor tq = DeviceTensor.FromHost<float>(device, q, DType.F32, tokens, heads, d);
        using DeviceTensor tk = DeviceTensor.FromHost<float>(device, k, DType.F32, tokens, kvHeads, d);
        using DeviceTensor tv = DeviceTensor.FromHost<float>(device, v, DType.F32, tokens, kvHeads, d);
        using DeviceTensor tables1 = DeviceTensor.FromHost<int>(device, tables, DType.I32, sequences.Length, maxPages);
        using DeviceTensor seq1 = DeviceTensor.FromHost<int>(device, rowSequence, DType.I32, tokens);
        using DeviceTensor pos1 = DeviceTensor.FromHost<int>(device, rowPosition, DType.I32, tokens);
        var rows = new PagedRows(tables1, seq1, pos1);
        using DeviceTensor paged = DeviceTensor.Allocate(device, DType.F32, tokens, heads, d);
        PagedAttention.Write(tk, tv, cache, 0, rows);
        PagedAttention.Forward(tq, cache, 0, rows, paged);

        using DeviceTensor packed = DeviceTensor.Allocate(device, DType.F32, tokens, heads, d);
        using DeviceTensor lse = DeviceTensor.Allocate(device, DType.F32, tokens, heads);
        Attention.Forward(tq, tk, tv, [0, 7, 8, 18], packed, lse, window);
        float[] expected = packed.ToHost<float>(), actual = paged.ToHost<float>();

        // Both sum ≤ 10 terms of |p·v| ≤ 1 in float32: a few units of 2⁻²⁴ apart at most.
        for (int i = 0; i < expected.Length; i++)
        {
            Assert.True(Math.Abs(expected[i] - actual[i]) <= 1e-5f, $"[{i}] {actual[i]} vs {expected[i]}");
        }
    }

}

/// <summary><see cref="PagedAttentionTests{TDevice}"/> on the CPU accelerator (its CPU schedules).</summary>
public sealed class PagedAttentionTestsOnCpu(CpuDeviceFixture fixture) : PagedAttentionTests<CpuDeviceFixture>(fixture);

/// <summary><see cref="PagedAttentionTests{TDevice}"/> running the GPU kernel on 32-lane CPU warps.</summary>
public sealed class PagedAttentionTestsOnCpuWarp32(CpuWarp32DeviceFixture fixture) : PagedAttentionTests<CpuWarp32DeviceFixture>(fixture);

/// <summary><see cref="PagedAttentionTests{TDevice}"/> on CUDA (skipped without a CUDA device).</summary>
public sealed class PagedAttentionTestsOnCuda(CudaDeviceFixture fixture) : PagedAttentionTests<CudaDeviceFixture>(fixture);

/// <summary>
/// The step forward on the tiny Llama: the logits of every prefill chunk and decode step against a full recompute of
/// the whole prefix and against the float64 model — several sequences per step, with and without a sliding window.
/// </summary>
public abstract class KvCacheTests<TDevice>(TDevice fixture) : IClassFixture<TDevice>
    where TDevice : DeviceFixture
{
    [Theory]
    [InlineData(0)]
    [InlineData(5)]
    public void StepLogitsEqualFullRecompute(int window)
    {
        var device = fixture.Device;
        (string folder, TinyLlama.Weights weights) = TinyLlama.WriteCheckpoint(slidingWindow: window);
        using LlamaForCausalLM model = LlamaForCausalLM.LoadModel(device, folder);
        EngineModel engine = EngineModel.Of(model);
        using KvCache cache = KvCache.For(engine, tokens: 96, pageTokens: 4);
        using var runner = new StepRunner(engine, cache, maxRows: 16, maxSequences: 3, maxPages: 8);

        // Three sequences: prompts prefilled in chunks (one of them sharing a step with another's decode), then decoded
        // together one token a step, each fed its own fixed continuation.
        int[][] full = [[3, 17, 42, 0, 9, 9, 31, 5, 11, 2, 8, 40, 1, 7], [7, 2, 49, 11, 30, 8, 1, 4], [30, 8, 1, 12, 19, 22, 4, 4, 6, 33, 21]];
        var sequences = full.Select(_ => new KvSequence()).ToArray();
        var steps = new List<int[]> { new[] { 4, 0, 0 }, new[] { 5, 3, 6 }, new[] { 0, 0, 5 } }; // prefill chunks per sequence
        for (int i = 0; i < 6; i++)
        {
            steps.Add([1, 1, 0]);
        }

        var fed = new int[full.Length];
        int checkedRows = 0;
        foreach (int[] counts in steps)
        {
            var pieces = new List<StepPiece>();
            var owners = new List<int>();
            for (int s = 0; s < full.Length; s++)
            {
                int n = Math.Min(counts[s], full[s].Length - fed[s]);
                if (n == 0)
                {
                    continue;
                }

                Assert.True(cache.TryReserve(sequences[s], fed[s] + n));
                pieces.Add(new StepPiece(sequences[s], full[s][fed[s]..(fed[s] + n)], null));
                owners.Add(s);
                fed[s] += n;
            }

            if (pieces.Count == 0)
            {
                continue;
            }

            float[] logits = runner.Run(pieces).ToHost<float>();
            for (int p = 0; p < pieces.Count; p++)
            {
                int[] prefix = full[owners[p]][..fed[owners[p]]];
                float[] all = engine.Logits(prefix);
                double[] reference = TinyLlama.Reference(weights, prefix, window);
                int vocab = TinyLlama.Vocab, last = prefix.Length - 1;
                for (int j = 0; j < vocab; j++)
                {
                    float recomputed = all[(last * vocab) + j], stepped = logits[(p * vocab) + j];
                    Assert.True(Math.Abs(stepped - recomputed) <= 2e-5f * (1 + Math.Abs(recomputed)), $"{prefix.Length} tokens, logit {j}: {stepped} vs {recomputed}");
                    Assert.True(Math.Abs(stepped - reference[(last * vocab) + j]) <= 1e-3, $"{stepped} vs f64 {reference[(last * vocab) + j]}");
                }

                checkedRows++;
                Assert.Equal(prefix.Length, sequences[owners[p]].Length);
            }
        }

        Assert.True(checkedRows >= 12);
        if (window > 0)
        {
            // Only the window's pages stay held: ⌈(window − 1) / 4⌉ + 1 at most per sequence.
            Assert.All(sequences, s => Assert.True(s.Pages <= 3, $"{s.Pages} pages held"));
        }

        foreach (KvSequence s in sequences)
        {
            cache.Release(s);
        }

        Assert.Equal(cache.PageCount, cache.FreePages);
    }
}

/// <summary><see cref="KvCacheTests{TDevice}"/> on the CPU accelerator (its CPU schedules).</summary>
public sealed class KvCacheTestsOnCpu(CpuDeviceFixture fixture) : KvCacheTests<CpuDeviceFixture>(fixture);

/// <summary><see cref="KvCacheTests{TDevice}"/> on CUDA (skipped without a CUDA device).</summary>
public sealed class KvCacheTestsOnCuda(CudaDeviceFixture fixture) : KvCacheTests<CudaDeviceFixture>(fixture);

/// <summary>The CPU accelerator running the GPU kernels with four 4-lane warps per group: paged attention's cross-warp combine.</summary>
public sealed class CpuFourWarpDeviceFixture() : DeviceFixture(() => Devices.Device.Cpu(4, 4, multiprocessors: 1, cpuSchedules: false), "");

/// <summary><see cref="PagedAttentionTests{TDevice}"/> with four warps per group splitting the key axis (flash-decoding's combine).</summary>
public sealed class PagedAttentionTestsOnCpuFourWarps(CpuFourWarpDeviceFixture fixture) : PagedAttentionTests<CpuFourWarpDeviceFixture>(fixture);
