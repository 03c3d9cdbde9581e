using System.Diagnostics;
using System.Text.Json.Nodes;
using QLoRA.Core;
using QLoRA.Core.HuggingFace;
using QLoRA.Runtime.Devices;
using QLoRA.Runtime.Engine;
using QLoRA.Runtime.Layers;
using QLoRA.Runtime.Models;
using QLoRA.Runtime.Ops;
using QLoRA.Runtime.Tensors;
using QLoRA.Runtime.Training;

namespace QLoRA.Bench;

/// <summary>
/// One LoRA training step of the small Llama on the CPU (4 sequences × 256 tokens packed, r16 on all seven projections,
/// f32 compute, NF4 base): forward keeping each block's activations, the fused lm_head + cross-entropy, the backward
/// through every block, and AdamW on the adapters — run by the training engine —
/// next to the same step in PyTorch (bench/cpu/torch_train_step.py, dense float32 base) in the same run.
/// </summary>
internal static class CpuTrainStepBenchmark
{
    private const int Sequences = 4, SeqLen = 256, Rank = 16;

    public static int Run(string[] args)
    {
        int reps = args.Length > 1 && int.TryParse(args[1], out int r) ? r : 5;
        string folder = CpuForwardBenchmark.WriteCheckpoint();
        try
        {
            using Device device = Device.Cpu();
            using LlamaForCausalLM model = LlamaForCausalLM.LoadModel(device, folder);
            using var step = new Step(device, model);
            var losses = new List<double>();
            losses.Add(step.Run(1));
            var times = new double[reps];
            for (int i = 0; i < reps; i++)
            {
                var sw = Stopwatch.StartNew();
                losses.Add(step.Run(i + 2));
                times[i] = sw.Elapsed.TotalSeconds;
            }

            Array.Sort(times);
            double ours = times[reps / 2];
            // The same step with gradient checkpointing: each block's forward runs twice, one block's activations kept.
            double checkpointed;
            long checkpointedBytes;
            using (LlamaForCausalLM again = LlamaForCausalLM.LoadModel(device, folder))
            using (var withCheckpointing = new Step(device, again, checkpointing: true))
            {
                withCheckpointing.Run(1);
                var sw = Stopwatch.StartNew();
                withCheckpointing.Run(2);
                checkpointed = sw.Elapsed.TotalSeconds;
                checkpointedBytes = withCheckpointing.ActivationBytes;
            }

            (double? torch, double? torchLoss) = TorchPeer(folder, reps);
            double? before = null;
            if (args.Contains("--before"))
            {
                // The same step with the GPU schedules' kernels on emulated warps: what the CPU ran before its schedules.
                using Device gpuSchedules = Device.Cpu(2, 1, cpuSchedules: false);
                using LlamaForCausalLM slow = LlamaForCausalLM.LoadModel(gpuSchedules, folder);
                using var slowStep = new Step(gpuSchedules, slow);
                var sw = Stopwatch.StartNew();
                slowStep.Run(1);
                before = sw.Elapsed.TotalSeconds;
            }

            Console.WriteLine();
            Console.WriteLine($"LoRA training step, small Llama (hidden 256, 4 layers, {Sequences}×{SeqLen} tokens, r{Rank} on all projections, f32), {Environment.ProcessorCount} cores, median of {reps}");
            Console.WriteLine("| implementation | step | loss at step 1 |");
            Console.WriteLine("| --- | ---: | ---: |");
            Console.WriteLine($"| QLoRA.Sdk on the CPU accelerator (NF4 base; activations {step.ActivationBytes / 1e6:F1} MB) | {ours:F3} s | {losses[0]:F4} |");
            Console.WriteLine($"| the same, gradient checkpointing (activations {checkpointedBytes / 1e6:F1} MB) | {checkpointed:F3} s | |");
            Console.WriteLine(torch is double t
                ? $"| PyTorch (dense float32 base) | {t:F3} s | {torchLoss:F4} |"
                : "| PyTorch | not run: apt-get install python3-torch libopenblas0-pthread | |");
            if (before is double b)
            {
                Console.WriteLine($"| the same step, GPU schedules on emulated warps (before) | {b:F3} s | |");
            }

            Console.WriteLine($"losses over the steps: {string.Join(", ", losses.Select(l => l.ToString("F4", System.Globalization.CultureInfo.InvariantCulture)))}");
            if (torch is double peer)
            {
                Console.WriteLine($"ours / PyTorch: {ours / peer:F2}× (target ≤ 3×)");
            }

            Console.WriteLine(new JsonObject
            {
                ["benchmark"] = "cpu-train-step",
                ["step_s"] = ours,
                ["checkpointed_step_s"] = checkpointed,
                ["activation_bytes"] = step.ActivationBytes,
                ["checkpointed_activation_bytes"] = checkpointedBytes,
                ["torch_step_s"] = torch,
                ["ours_over_torch"] = torch is double q ? ours / q : null,
                ["before_s"] = before,
                ["first_loss"] = losses[0],
                ["last_loss"] = losses[^1],
                ["processors"] = Environment.ProcessorCount,
            }.ToJsonString());
            return 0;
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }

    /// <summary>The training engine planned for the batch, AdamW on its flat buffers; one optimizer step per run.</summary>
    private sealed class Step : IDisposable
    {
        private readonly Device _device;
        private readonly TrainingEngine _engine;
        private readonly AdamWOptimizer _optimizer;
        private readonly PackedBatch _batch;

        public Step(Device device, LlamaForCausalLM model, bool checkpointing = false)
        {
            _device = device;
            HfModelConfig c = model.Config;
            int t = Sequences * SeqLen;
            int[] ids = [.. Enumerable.Range(0, t).Select(i => ((i * 37) + (i / SeqLen * 11)) % c.VocabSize)];
            _batch = PackedBatch.ForNextToken([.. Enumerable.Range(0, Sequences).Select(s => ids[(s * SeqLen)..((s + 1) * SeqLen)])]);
            var rng = new Random(3);
            foreach (QuantizedLinear projection in EngineModel.Of(model).Projections().Select(p => p.Layer))
            {
                // PEFT's default init: A kaiming-uniform (bound 1/sqrt(in)), B zero; α = r: scaling 1.
                double bound = 1 / Math.Sqrt(projection.InFeatures);
                float[] a = [.. Enumerable.Range(0, Rank * projection.InFeatures).Select(_ => (float)(((rng.NextDouble() * 2) - 1) * bound))];
                projection.Lora = new LoraSlot(device, a, new float[projection.OutFeatures * Rank], Rank, projection.InFeatures, projection.OutFeatures, 1f);
            }

            _engine = new TrainingEngine(device, EngineModel.Of(model), new EngineOptions(t, checkpointing, MaxMicroBatches: 1));
            _optimizer = new AdamWOptimizer(device, _engine.Parameters.Count, new AdamWOptions());
        }

        public long ActivationBytes => _engine.Layout.Bytes;

        public double Run(int stepNumber)
        {
            float scale = 1f / _batch.TargetTokens;
            _engine.BeginStep();
            _engine.Accumulate(_batch, scale);
            StepStatistics stats = _engine.ReadStep(scale);
            _optimizer.Step(_engine.Parameters, stepNumber, 1e-3, 1f);
            _engine.Parameters.RefreshCompute();
            _device.Stream.Synchronize();
            return stats.Loss;
        }

        public void Dispose()
        {
            _optimizer.Dispose();
            _engine.Dispose();
        }
    }

    private static (double? Seconds, double? Loss) TorchPeer(string folder, int reps) =>
        PythonPeer.Run("torch_train_step.py", null, folder, Environment.ProcessorCount, reps) is JsonNode node
            ? (node[0]!["seconds"]!.GetValue<double>(), node[0]!["first_loss"]!.GetValue<double>())
            : (null, null);
}
