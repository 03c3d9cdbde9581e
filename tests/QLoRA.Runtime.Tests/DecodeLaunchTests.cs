using QLoRA.Core;
using QLoRA.Runtime.Devices;
using QLoRA.Runtime.Engine;
using QLoRA.Runtime.Generation;
using QLoRA.Runtime.Models;

namespace QLoRA.Runtime.Tests;

/// <summary>
/// The launch-lean decode step, run with the GPU kernels (the CPU accelerator with GPU schedules, 4-lane warps in
/// groups of two so the emulation stays quick): its logits equal the plain ops' bit for bit, and a block issues at most
/// 8 launches, counted by the runtime.
/// </summary>
public sealed class DecodeLaunchTests
{
    public const int LaunchesPerBlock = 8;

    private static (float[] Logits, long Launches) Decode(Device device, EngineModel model, bool fused, int sequences)
    {
        using KvCache cache = KvCache.For(model, 64, pageTokens: 4);
        using var runner = new StepRunner(model, cache, maxRows: 16, maxSequences: 4, maxPages: 8) { Fused = fused };
        var kv = Enumerable.Range(0, sequences).Select(_ => new KvSequence()).ToArray();
        int[][] prompts = [[5, 9, 31, 7, 2], [8, 8, 1], [40, 2, 3, 4, 5, 6, 7]];
        for (int s = 0; s < sequences; s++)
        {
            Assert.True(cache.TryReserve(kv[s], 16));
            runner.Run([new StepPiece(kv[s], prompts[s], null)]); // prefill (not measured)
        }

        long before = device.LaunchCount;
        float[] logits = runner.Run([.. Enumerable.Range(0, sequences).Select(s => new StepPiece(kv[s], [11 + s], null))]).ToHost<float>();
        return (logits, device.LaunchCount - before);
    }

    [Theory]
    [InlineData(DType.F32)]
    [InlineData(DType.BF16)]
    public void FusedDecodeEqualsThePlainOpsBitForBitInAtMostEightLaunchesPerBlock(DType compute)
    {
        const int sequences = 3;
        string one = Directory.CreateTempSubdirectory("qlora-decode-").FullName, two = Directory.CreateTempSubdirectory("qlora-decode-").FullName;
        RandomLlama.Write(one, new RandomLlamaOptions(Hidden: 64, Intermediate: 96, Layers: 1, Heads: 4, KeyValueHeads: 2, Seed: 3));
        RandomLlama.Write(two, new RandomLlamaOptions(Hidden: 64, Intermediate: 96, Layers: 2, Heads: 4, KeyValueHeads: 2, Seed: 3));
        using Device device = Device.Cpu(4, 2, multiprocessors: 2, cpuSchedules: false);
        device.ComputeDtype = compute;
        long fusedTwo, plainTwo;
        using (LlamaForCausalLM llama = LlamaForCausalLM.Load(device, two))
        {
            (float[] fused, fusedTwo) = Decode(device, llama.ToEngineModel(), fused: true, sequences);
            (float[] plain, plainTwo) = Decode(device, llama.ToEngineModel(), fused: false, sequences);
            Assert.Equal(plain, fused); // bit for bit: the same sums in the same order, the same roundings
        }

        using LlamaForCausalLM single = LlamaForCausalLM.Load(device, one);
        long fusedOne = Decode(device, single.ToEngineModel(), fused: true, sequences).Launches;
        long plainOne = Decode(device, single.ToEngineModel(), fused: false, sequences).Launches;
        long perBlock = fusedTwo - fusedOne;
        Assert.True(perBlock <= LaunchesPerBlock, $"{perBlock} launches per block (plain path: {plainTwo - plainOne})");
        Assert.True(plainTwo - plainOne > perBlock, $"plain {plainTwo - plainOne} vs fused {perBlock}");
    }
}
