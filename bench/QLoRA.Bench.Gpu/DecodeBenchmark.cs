using System.Diagnostics;
using System.Text.Json;
using QLoRA.Core;
using QLoRA.Core.Peft;
using QLoRA.Modeling;
using QLoRA.Runtime.Engine;
using QLoRA.Runtime.Generation;
using QLoRA.Runtime.Models;
using Device = QLoRA.Runtime.Devices.Device;

namespace QLoRA.Bench.Gpu;

/// <summary>
/// Decode and prefill speed of the generation engine at llama-1b/8b shapes (random NF4 + DQ weights): greedy decode
/// tokens/s at each batch size, with CUDA graphs on and off and with one LoRA adapter (r16, all linear layers), each
/// beside its bandwidth bound — the weight bytes a step reads ÷ the device copy bandwidth measured in the same run —
/// and prefill tokens/s of one long prompt. bench/gpu/hf_decode.py measures HF transformers bf16 (static cache +
/// torch.compile) on the same shapes.
///   dotnet QLoRA.Bench.Gpu.dll decode [--shape 1b|8b] [--batch 1,8,64] [--tokens 128] [--prefill 2048] [--profile] [--small]
/// --profile adds the device time of each kernel per decode step at batch 1 (plain launches), without and with the adapter.
/// </summary>
internal static class DecodeBenchmark
{
    public static int Run(string[] args, Device device)
    {
        string Option(string name, string fallback) => RandomWeights.Option(args, name, fallback);
        bool small = args.Contains("--small");
        string shape = Option("--shape", "8b");
        int[] batches = [.. Option("--batch", small ? "1,4" : "1,8,64").Split(',').Select(int.Parse)];
        int tokens = int.Parse(Option("--tokens", small ? "16" : "128")), prefill = int.Parse(Option("--prefill", small ? "128" : "2048"));
        var report = new BenchReport(device, small);
        Sections.Copy(report);
        var config = RandomWeights.Config(shape, small);
        using var source = new RandomWeights(config);
        (LlamaForCausalLM model, EngineModel engineModel) = RandomWeights.Load(device, config, source);
        using LlamaForCausalLM owned = model;
        long weightBytes = engineModel.Projections().Sum(p => p.Layer.WeightBytes) + engineModel.LmHead.ByteLength;
        var rows = new List<Dictionary<string, object>>();
        Console.WriteLine($"device: {device.Description}; llama-{(small ? "small" : shape)} shape, NF4 + DQ, {weightBytes / 1e9:F2} GB of weights read per decode step; copy bandwidth {report.CopyBandwidth / 1e12:F2} TB/s");
        Console.WriteLine("| decode | batch | graphs | adapter | tokens/s | step | bound tokens/s | share of bound | launches/step |");
        Console.WriteLine("| --- | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: |");
        LoraAdapter adapter = RandomAdapter(engineModel);
        foreach (int batch in batches)
        {
            foreach ((bool graphs, bool lora) in new[] { (true, false), (false, false), (true, true) })
            {
                using var engine = new GenerationEngine(engineModel, new GenerationEngineOptions
                {
                    MaxBatch = batch, MaxSequenceLength = 64 + tokens, StepTokens = Math.Max(batch, 256), CudaGraphs = graphs, CacheTokens = batch * (64 + tokens),
                });
                if (lora)
                {
                    engine.Adapters.Add("bench", adapter);
                }

                var rng = new Random(batch);
                var requests = Enumerable.Range(0, batch).Select(_ => new GenerationRequest([.. Enumerable.Range(0, 16).Select(_ => rng.Next(config.VocabSize))])
                {
                    MaxTokens = tokens, Adapter = lora ? "bench" : null,
                }).ToList();
                engine.GenerateBatch([.. requests.Select(r => r with { MaxTokens = 4 })]); // warm: compile, capture, pools

                // Time per decode step: the difference between a long and a one-token run removes prefill and setup.
                var clock = Stopwatch.StartNew();
                engine.GenerateBatch([.. requests.Select(r => r with { MaxTokens = 1 })]);
                double shortRun = clock.Elapsed.TotalSeconds;
                long launches = engine.Launches, steps = engine.Steps;
                clock.Restart();
                engine.GenerateBatch(requests);
                double step = (clock.Elapsed.TotalSeconds - shortRun) / (tokens - 1);
                double launchesPerStep = (double)(engine.Launches - launches) / Math.Max(1, engine.Steps - steps);
                double perSecond = batch / step, bound = batch * report.CopyBandwidth / 2 / weightBytes; // copy bandwidth counts read + write
                Console.WriteLine($"| decode | {batch} | {(graphs ? $"on ({engine.CapturedGraphs})" : "off")} | {(lora ? "r16 all-linear" : "none")} | {perSecond:F0} | {step * 1000:F2} ms | {bound:F0} | {perSecond / bound:P0} | {launchesPerStep:F0} |");
                rows.Add(new() { ["batch"] = batch, ["graphs"] = graphs, ["captured"] = engine.CapturedGraphs, ["adapter"] = lora, ["tokens_per_s"] = perSecond, ["step_s"] = step, ["bound_tokens_per_s"] = bound, ["launches_per_step"] = launchesPerStep });

                // A record per row as it is measured: a run cut short by its time limit still leaves the rows it finished.
                Console.WriteLine(JsonSerializer.Serialize(new Dictionary<string, object>(rows[^1]) { ["benchmark"] = "qlora-decode-row", ["shape"] = small ? "small" : shape }));
            }
        }

        if (args.Contains("--profile"))
        {
            // Batch 1 with plain launches, without and with the adapter: device time per decode step, kernel by kernel.
            foreach (bool lora in new[] { false, true })
            {
                using var engine = new GenerationEngine(engineModel, new GenerationEngineOptions
                {
                    MaxBatch = 1, MaxSequenceLength = 64 + tokens, StepTokens = 256, CudaGraphs = false, CacheTokens = 64 + tokens,
                });
                if (lora)
                {
                    engine.Adapters.Add("bench", adapter);
                }

                var prompt = new GenerationRequest([.. Enumerable.Range(0, 16).Select(i => (i * 131) % config.VocabSize)]) { MaxTokens = tokens, Adapter = lora ? "bench" : null };
                engine.Generate(prompt with { MaxTokens = 4 }); // warm
                List<QLoRA.Runtime.Devices.KernelTime> perStep = KernelProfile.PerStep(device, () => engine.Generate(prompt), () => engine.Generate(prompt with { MaxTokens = 1 }), tokens - 1);
                KernelProfile.Print($"decode profile, batch 1, {(lora ? "r16 adapter" : "no adapter")}", perStep, new()
                {
                    ["benchmark"] = "qlora-decode-profile", ["shape"] = small ? "small" : shape, ["batch"] = 1, ["adapter"] = lora, ["weight_bytes"] = weightBytes,
                    ["copy_bandwidth"] = report.CopyBandwidth,
                });
            }
        }

        double prefillRate;
        using (var engine = new GenerationEngine(engineModel, new GenerationEngineOptions { MaxBatch = 1, MaxSequenceLength = prefill + 8, StepTokens = prefill }))
        {
            int[] prompt = [.. Enumerable.Range(0, prefill).Select(i => (i * 7919) % config.VocabSize)];
            engine.Generate(new GenerationRequest(prompt) { MaxTokens = 1 }); // warm
            var clock = Stopwatch.StartNew();
            engine.Generate(new GenerationRequest(prompt) { MaxTokens = 1 });
            prefillRate = prefill / clock.Elapsed.TotalSeconds;
        }

        Console.WriteLine($"| prefill | 1 × {prefill} tokens | | | {prefillRate:F0} | | | | |");
        Console.WriteLine(JsonSerializer.Serialize(new Dictionary<string, object>
        {
            ["benchmark"] = "qlora-decode", ["device"] = device.Description, ["shape"] = small ? "small" : shape, ["weight_bytes"] = weightBytes,
            ["copy_bandwidth"] = report.CopyBandwidth, ["decode"] = rows, ["prefill_tokens"] = prefill, ["prefill_tokens_per_s"] = prefillRate,
        }));
        return 0;
    }

    // A PEFT adapter of rank 16 on every projection with small random A and B.
    private static LoraAdapter RandomAdapter(EngineModel model)
    {
        var rng = new Random(5);
        float[] Values(long n) => [.. Enumerable.Range(0, (int)n).Select(_ => (float)((rng.NextDouble() - 0.5) * 0.02))];
        var modules = model.Projections().Select(p => new LoraModuleWeights(p.Name,
            TensorData.FromSingle(Values(16L * p.Layer.InFeatures), 16, p.Layer.InFeatures),
            TensorData.FromSingle(Values(16L * p.Layer.OutFeatures), p.Layer.OutFeatures, 16))).ToList();
        return new LoraAdapter(LoraConfig.Parse("""{"r": 16, "lora_alpha": 32, "target_modules": "all-linear"}"""), modules);
    }
}
