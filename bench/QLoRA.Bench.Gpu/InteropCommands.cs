using System.Runtime.InteropServices;
using QLoRA.Core.Peft;
using QLoRA.Modeling;
using QLoRA.Runtime.Engine;
using QLoRA.Runtime.Layers;
using QLoRA.Runtime.Models;
using QLoRA.Runtime.Training;
using Device = QLoRA.Runtime.Devices.Device;

namespace QLoRA.Bench.Gpu;

/// <summary>
/// The commands the interop scripts (tests/interop) drive, on whatever device <see cref="Device.Best"/> gives:
///   logits &lt;hf-folder&gt; &lt;out.f32&gt; [--dense] [--adapter DIR] id id ...   float32 logits [ids, vocab] of the model (± a PEFT adapter)
///   train-adapter &lt;hf-folder&gt; &lt;out-dir&gt; [--dense] [--steps N] [--rank R]   a few QLoRA steps on seeded random ids, the adapter saved in PEFT's format
/// --dense keeps the projections in the checkpoint's dtype (no NF4), so logits compare with a dense PEFT model.
/// </summary>
internal static class InteropCommands
{
    public static int Logits(string[] args)
    {
        (List<string> positional, bool dense, string? adapter) = Parse(args[1..]);
        using Device device = Device.Best();
        using LlamaForCausalLM model = LlamaForCausalLM.Load(device, positional[0], new LoadOptions(KeepProjectionsDense: dense));
        if (adapter is not null)
        {
            LoraAttachment.AttachSaved(device, model.EnumerateLayers(), LoraAdapter.Load(adapter));
        }

        float[] logits = model.Forward([.. positional.Skip(2).Select(int.Parse)]);
        File.WriteAllBytes(positional[1], MemoryMarshal.AsBytes(logits.AsSpan()).ToArray());
        Console.WriteLine($"device: {device.Description}; {(dense ? "dense" : "NF4")} projections{(adapter is null ? "" : $", adapter {adapter}")}; wrote {logits.Length} logits to {positional[1]}");
        return 0;
    }

    public static int TrainAdapter(string[] args)
    {
        (List<string> positional, bool dense, _) = Parse(args[1..]);
        int steps = int.Parse(RandomWeights.Option(args, "--steps", "3")), rank = int.Parse(RandomWeights.Option(args, "--rank", "8"));
        using Device device = Device.Best();
        using LlamaForCausalLM model = LlamaForCausalLM.Load(device, positional[0], new LoadOptions(KeepProjectionsDense: dense));
        EngineModel engine = model.ToEngineModel();
        var lora = LoraConfig.Parse($$"""{"r": {{rank}}, "lora_alpha": {{2 * rank}}, "lora_dropout": 0.0, "target_modules": "all-linear"}""");
        var options = new TrainerOptions { MaxSteps = steps, LearningRate = 1e-2, WarmupRatio = 0, GradientAccumulation = 1, Optimizer = OptimizerKind.AdamW };
        using var trainer = new LoraTrainer(device, engine, lora, options, new EngineOptions(128, GradientCheckpointing: false, MaxMicroBatches: 1));
        var rng = new Random(17);
        int vocab = engine.Config.VocabSize;
        PackedBatch batch = PackedBatch.ForNextToken([.. Enumerable.Range(0, 2).Select(_ => Enumerable.Range(0, 48).Select(_ => rng.Next(vocab)).ToArray())]);
        double loss = double.NaN;
        for (int i = 0; i < steps; i++)
        {
            loss = trainer.TrainStep([batch]).Loss;
        }

        trainer.ExportAdapter().Save(positional[1]);
        Console.WriteLine($"device: {device.Description}; {steps} steps (loss {loss:F4}), r{rank} adapter saved to {positional[1]}");
        return 0;
    }

    private static (List<string> Positional, bool Dense, string? Adapter) Parse(string[] args)
    {
        var positional = new List<string>();
        bool dense = false;
        string? adapter = null;
        for (int i = 0; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--dense": dense = true; break;
                case "--adapter": adapter = args[++i]; break;
                case "--steps" or "--rank": i++; break;
                default: positional.Add(args[i]); break;
            }
        }

        return (positional, dense, adapter);
    }
}
