using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Text.Json.Nodes;
using QLoRA.Core.Numerics;
using QLoRA.Core.Peft;
using QLoRA.Core.Quantization;
using QLoRA.Runtime.Devices;
using QLoRA.Runtime.Engine;
using QLoRA.Runtime.Generation;
using QLoRA.Runtime.Models;
using QLoRA.Runtime.Training;

namespace QLoRA.Cli;

/// <summary>
/// <c>qlora bench [--hidden N] [--layers N] [--json]</c>: a short self-benchmark of this machine — NF4 + double
/// quantization throughput beside a plain copy of the same bytes, greedy decode tokens/s of a random Llama at batch 1
/// and 4 through the generation engine, and LoRA training tokens/s on it — as a table (or one JSON record).
/// </summary>
internal static class BenchCommand
{
    public static Command Create(CommandContext context)
    {
        var hidden = new Option<int>("--hidden") { Description = "hidden_size of the random model", DefaultValueFactory = _ => 256 };
        var layers = new Option<int>("--layers") { Description = "Layers of the random model", DefaultValueFactory = _ => 4 };
        var json = new Option<bool>("--json") { Description = "Print one JSON record instead of the table" };
        var command = new Command("bench", "A short benchmark of this machine: quantization, decode and a training step") { hidden, layers, json };
        command.SetAction(parsed => Run(context, parsed.GetValue(hidden), parsed.GetValue(layers), parsed.GetValue(json)));
        return command;
    }

    private static int Run(CommandContext context, int hidden, int layers, bool json)
    {
        if (hidden < 64 || hidden % 64 != 0 || layers < 1)
        {
            throw new CliException("--hidden must be a multiple of 64 (at least 64) and --layers at least 1");
        }

        var rows = new List<(string Name, double Value, string Unit, string Note)>();

        // Quantization: 32 MiB of bf16 → NF4 + DQ, beside a copy of the same bytes (the machine's memory speed).
        var rng = new Random(1);
        BFloat16[] values = [.. Enumerable.Range(0, 16 << 20).Select(_ => BFloat16.FromSingle((float)((rng.NextDouble() - 0.5) * 0.1)))];
        long bytes = values.LongLength * 2;
        var destination = new BFloat16[values.Length];
        values.AsSpan().CopyTo(destination); // fault the pages in before timing
        double copy = Best(() => values.AsSpan().CopyTo(destination));
        double quantize = Best(() => QuantizedTensor.Quantize(values, [4096, values.Length / 4096], QuantizationOptions.Default));
        rows.Add(("copy (reference)", bytes / copy / 1e9, "GB/s", "same bytes, one thread"));
        rows.Add(("NF4 + DQ quantize", bytes / quantize / 1e9, "GB/s", string.Create(CultureInfo.InvariantCulture, $"{copy / quantize:P0} of the copy")));

        string folder = Directory.CreateTempSubdirectory("qlora-bench-").FullName;
        try
        {
            RandomLlama.Write(folder, new RandomLlamaOptions(Hidden: hidden, Intermediate: hidden * 11 / 4 / 32 * 32, Layers: layers, Heads: hidden / 64, KeyValueHeads: Math.Max(1, hidden / 256)));
            using Device device = Device.Best();
            using LlamaForCausalLM model = LlamaForCausalLM.Load(device, folder);
            EngineModel engine = model.ToEngineModel();
            using (var generation = new GenerationEngine(engine, new GenerationEngineOptions { MaxBatch = 4, MaxSequenceLength = 256 }))
            {
                int[] prompt = [.. Enumerable.Range(0, 16).Select(i => 32 + i)];
                generation.Generate(new GenerationRequest(prompt) { MaxTokens = 8 }); // compile and warm
                foreach (int batch in new[] { 1, 4 })
                {
                    var requests = Enumerable.Range(0, batch).Select(_ => new GenerationRequest(prompt) { MaxTokens = 64 }).ToList();
                    var clock = Stopwatch.StartNew();
                    int tokens = generation.GenerateBatch(requests).Sum(r => r.Ids.Count);
                    rows.Add(($"decode, batch {batch}", tokens / clock.Elapsed.TotalSeconds, "tokens/s", $"hidden {hidden}, {layers} layers, NF4 + DQ"));
                }
            }

            var lora = LoraConfig.Parse("""{"r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "target_modules": "all-linear"}""");
            using var trainer = new LoraTrainer(device, engine, lora, new TrainerOptions { MaxSteps = 4, GradientAccumulation = 1 }, new EngineOptions(512, GradientCheckpointing: true));
            int[] ids = [.. Enumerable.Range(0, 512).Select(i => 32 + (i * 7 % 200))];
            var batchOf = new QLoRA.Runtime.Engine.PackedBatch(ids, [.. ids.Skip(1), -100], [0, ids.Length]);
            trainer.TrainStep([batchOf]); // compile and warm
            double step = Best(() => trainer.TrainStep([batchOf]), repeats: 3);
            rows.Add(("LoRA training step", ids.Length / step, "tokens/s", "512 tokens, r16 all-linear, checkpointing, paged AdamW"));
            Report(context, rows, device.Description, json);
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }

        return 0;
    }

    private static void Report(CommandContext context, List<(string Name, double Value, string Unit, string Note)> rows, string device, bool json)
    {
        TextWriter w = context.Output;
        if (json)
        {
            var record = new JsonObject { ["device"] = device };
            foreach ((string name, double value, string unit, _) in rows)
            {
                record[name] = new JsonObject { ["value"] = value, ["unit"] = unit };
            }

            w.WriteLine(record.ToJsonString());
            return;
        }

        w.WriteLine($"qlora bench on {device}");
        w.WriteLine("| what | value | unit | note |");
        w.WriteLine("| --- | ---: | --- | --- |");
        foreach ((string name, double value, string unit, string note) in rows)
        {
            w.WriteLine(string.Create(CultureInfo.InvariantCulture, $"| {name} | {value:N1} | {unit} | {note} |"));
        }
    }

    // The best of a few timed runs, in seconds.
    private static double Best(Action action, int repeats = 3)
    {
        double best = double.MaxValue;
        for (int i = 0; i < repeats; i++)
        {
            var clock = Stopwatch.StartNew();
            action();
            best = Math.Min(best, clock.Elapsed.TotalSeconds);
        }

        return best;
    }
}
