using System.Diagnostics;
using System.Text.Json;
using QLoRA.Core.Peft;
using QLoRA.Modeling;
using QLoRA.Runtime.Engine;
using QLoRA.Runtime.Models;
using QLoRA.Runtime.Training;
using Device = QLoRA.Runtime.Devices.Device;

namespace QLoRA.Bench.Gpu;

/// <summary>
/// QLoRA training speed and memory at llama-1b/8b shapes (random NF4 + DQ weights, LoRA r16 alpha 32 on every linear
/// layer, dropout 0, paged AdamW, gradient checkpointing): tokens/s over timed steps after a warmup step, and the peak
/// of the device allocator. bench/gpu/peft_train.py measures HF transformers + PEFT bf16 LoRA on the same shapes.
///   dotnet QLoRA.Bench.Gpu.dll train [--shape 1b|8b] [--batch 1|4] [--seq 2048] [--steps 5] [--no-checkpointing] [--profile] [--small]
/// --profile adds the device time of each kernel (and of cuBLAS) in one more step.
/// </summary>
internal static class TrainBenchmark
{
    public static int Run(string[] args, Device device)
    {
        string Option(string name, string fallback) => RandomWeights.Option(args, name, fallback);
        bool small = args.Contains("--small");
        string shape = Option("--shape", "1b");
        int batch = int.Parse(Option("--batch", "1")), seq = int.Parse(Option("--seq", small ? "128" : "2048")), steps = int.Parse(Option("--steps", "5"));
        bool checkpointing = !args.Contains("--no-checkpointing");
        var config = RandomWeights.Config(shape, small);
        var load = Stopwatch.StartNew();
        using var source = new RandomWeights(config);
        (LlamaForCausalLM model, EngineModel engineModel) = RandomWeights.Load(device, config, source);
        using LlamaForCausalLM owned = model;
        double loadSeconds = load.Elapsed.TotalSeconds;
        var lora = LoraConfig.Parse("""{"r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "target_modules": "all-linear"}""");
        var options = new TrainerOptions { MaxSteps = steps + 2, LearningRate = 2e-4, WarmupRatio = 0, GradientAccumulation = 1, Optimizer = OptimizerKind.PagedAdamW32Bit };
        using var trainer = new LoraTrainer(device, engineModel, lora, options, new EngineOptions(batch * seq, checkpointing, MaxMicroBatches: 1));
        var rng = new Random(7);
        PackedBatch micro = PackedBatch.ForNextToken([.. Enumerable.Range(0, batch).Select(_ => Enumerable.Range(0, seq).Select(_ => rng.Next(config.VocabSize)).ToArray())]);
        trainer.TrainStep([micro]); // warmup: kernel compilation, cuBLAS handles, allocator pools
        var sw = Stopwatch.StartNew();
        double loss = 0;
        for (int i = 0; i < steps; i++)
        {
            loss = trainer.TrainStep([micro]).Loss;
        }

        double seconds = sw.Elapsed.TotalSeconds / steps;
        double tokensPerSecond = batch * seq / seconds;
        long peak = device.Allocator.PeakAllocatedBytes;
        Console.WriteLine($"device: {device.Description}");
        Console.WriteLine($"| QLoRA training, llama-{(small ? "small" : shape)} shape, batch {batch} × seq {seq}, r16 all linear, checkpointing {(checkpointing ? "on" : "off")} | value |");
        Console.WriteLine("| --- | ---: |");
        Console.WriteLine($"| step | {seconds * 1000:F1} ms |");
        Console.WriteLine($"| tokens/s | {tokensPerSecond:F0} |");
        Console.WriteLine($"| peak device memory (allocator) | {peak / 1073741824.0:F2} GiB |");
        Console.WriteLine($"| memory estimate | {trainer.Estimate.TotalBytes / 1073741824.0:F2} GiB ({trainer.Estimate}) |");
        Console.WriteLine($"| model load (random NF4) | {loadSeconds:F1} s |");
        Console.WriteLine(JsonSerializer.Serialize(new Dictionary<string, object>
        {
            ["benchmark"] = "qlora-train", ["device"] = device.Description, ["shape"] = small ? "small" : shape, ["batch"] = batch, ["seq"] = seq,
            ["checkpointing"] = checkpointing, ["step_s"] = seconds, ["tokens_per_s"] = tokensPerSecond, ["peak_bytes"] = peak,
            ["estimate_bytes"] = trainer.Estimate.TotalBytes, ["loss"] = loss,
        }));
        if (args.Contains("--profile"))
        {
            List<QLoRA.Runtime.Devices.KernelTime> perStep = KernelProfile.PerStep(device, () => trainer.TrainStep([micro]), null, 1);
            KernelProfile.Print($"training step profile, batch {batch} × seq {seq}", perStep, new()
            {
                ["benchmark"] = "qlora-train-profile", ["shape"] = small ? "small" : shape, ["batch"] = batch, ["seq"] = seq, ["checkpointing"] = checkpointing,
            });
        }

        return double.IsFinite(loss) ? 0 : 1;
    }
}
