using System.CommandLine;
using System.Diagnostics;
using System.Runtime.InteropServices;
using QLoRA.Build.Tasks;
using QLoRA.Core;
using QLoRA.Core.Numerics;
using QLoRA.Core.Peft;
using QLoRA.Core.Quantization;
using QLoRA.Core.SafeTensors;
using QLoRA.Runtime.Devices;
using QLoRA.Runtime.Engine;
using QLoRA.Runtime.Generation;
using QLoRA.Runtime.Models;
using QLoRA.Runtime.Training;
using QLoRA.Text;
using QLoRA.Text.Data;
using QLoRA.Text.Templates;
using QLoRA.Text.Tokenization;

namespace QLoRA.Cli;

/// <summary>
/// <c>qlora demo [--check] [--output DIR]</c>: the whole QLoRA loop on a tiny Llama-shaped model that needs no download —
/// random bf16 weights with a byte-level tokenizer, quantized to NF4 + double quantization (footprint vs bf16 printed),
/// LoRA fine-tuned on the chat dataset shipped with the tool, the adapter saved in PEFT's format, and greedy answers
/// printed before and after. <c>--check</c> exits 1 when the trained model does not give the taught answer.
/// </summary>
internal static class DemoCommand
{
    public static Command Create(CommandContext context)
    {
        var check = new Option<bool>("--check") { Description = "Exit 1 unless the trained model answers as the data taught it" };
        var output = new Option<string>("--output") { Description = "Where the model, the adapter and the metrics go", DefaultValueFactory = _ => Path.Combine(Path.GetTempPath(), "qlora-demo") };
        var steps = new Option<int>("--steps") { Description = "Optimizer steps", DefaultValueFactory = _ => 60 };
        var model = new Option<string?>("--model") { Description = "Run on this checkpoint (a folder or a Hugging Face id in the local cache; its own tokenizer and chat template) instead of the tiny random model" };
        var command = new Command("demo", "Quantize, fine-tune and compare a tiny model end to end (no download)") { check, output, steps, model };
        command.SetAction(parsed => Run(context, parsed.GetValue(output)!, parsed.GetValue(steps), parsed.GetValue(check), parsed.GetValue(model)));
        return command;
    }

    private static int Run(CommandContext context, string output, int steps, bool check, string? checkpoint)
    {
        TextWriter w = context.Output;
        var clock = Stopwatch.StartNew();
        string root = Directory.CreateDirectory(output).FullName;
        string dense = checkpoint is null ? Path.Combine(root, "tiny-bf16") : QLoRA.Core.HuggingFace.HubCache.ResolveOrDownload(checkpoint);
        long bf16Bytes = checkpoint is null ? RandomLlama.Write(dense) : Directory.GetFiles(dense, "*.safetensors").Sum(f => new FileInfo(f).Length);
        string nf4 = Path.Combine(root, checkpoint is null ? "tiny-nf4" : "model-nf4");
        var job = new WeightsJob([.. Directory.GetFiles(dense, "*.safetensors").Order(StringComparer.Ordinal)], Path.Combine(dense, "config.json"), Path.GetFileName(nf4), root, QuantizationOptions.Default, ["lm_head", "embed_tokens"]) { WriteManifest = false };
        new WeightsQuantizer(_ => { }).Run(job);
        long nf4Bytes = Directory.GetFiles(nf4, "*.safetensors").Sum(f => new FileInfo(f).Length);
        string what = checkpoint is null ? $"a tiny Llama (hidden 128, 4 layers, vocab {ByteTokenizer.VocabSize}, random weights)" : dense;
        w.WriteLine($"1. {what} quantized to NF4 + double quantization: {InspectCommand.Size(bf16Bytes)} -> {InspectCommand.Size(nf4Bytes)} ({100.0 * nf4Bytes / bf16Bytes:F0}%; embeddings and lm_head kept dense)");

        HfTokenizer tokenizer = HfTokenizer.FromFolder(nf4);
        var chat = new ChatFormatter(tokenizer);
        string data = Path.Combine(AppContext.BaseDirectory, "demo", "demo.jsonl");
        SftDataset dataset = SftDataset.Load(data, chat, new SftDatasetOptions { MaxSequenceLength = 64, Shuffle = false });
        var questions = JsonlReader.Read(data).Records.Select(r => (Question: r.Messages![0].Content!, Answer: r.Messages![1].Content!)).ToList();
        using Device device = Device.Best();
        using LlamaForCausalLM model = LlamaForCausalLM.Load(device, nf4);
        EngineModel engine = model.ToEngineModel();
        w.WriteLine($"2. before training ({device.Description}):");
        foreach (((string question, _), string answer) in questions.Zip(Answers(engine, nf4, questions.Select(q => q.Question))))
        {
            w.WriteLine($"   {question} -> {Quote(answer)}");
        }

        var lora = LoraConfig.Parse("""{"r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "target_modules": "all-linear"}""");
        var options = new TrainerOptions { MaxSteps = steps, LearningRate = 3e-3, WarmupRatio = 0.05, GradientAccumulation = 1, Optimizer = OptimizerKind.PagedAdamW32Bit, MaxGradNorm = 1.0 };
        double first = double.NaN, last = double.NaN;
        using (var trainer = new LoraTrainer(device, engine, lora, options, new EngineOptions(256, GradientCheckpointing: true, MaxMicroBatches: 1)))
        {
            trainer.StepCompleted += r =>
            {
                first = double.IsNaN(first) ? r.Loss : first;
                last = r.Loss;
                if (r.Step % 10 == 0 || r.Step == steps)
                {
                    w.WriteLine($"   step {r.Step}/{steps}  loss {r.Loss:F3}");
                }
            };
            w.WriteLine($"3. LoRA r16 on every linear layer, paged AdamW, {steps} steps on {dataset.Train.Count} conversations (demo/demo.jsonl):");
            trainer.Fit(dataset.Train, null, new FitOptions { Epochs = steps, OutputDirectory = Path.Combine(root, "run") });
        }

        w.WriteLine($"4. adapter saved (PEFT format) in {Path.Combine(root, "run", "adapter")}; loss {first:F3} -> {last:F3}");
        w.WriteLine("5. after training:");
        int right = 0;
        foreach (((string question, string expected), string answer) in questions.Zip(Answers(engine, nf4, questions.Select(q => q.Question))))
        {
            right += answer == expected ? 1 : 0;
            w.WriteLine($"   {question} -> {Quote(answer)}{(answer == expected ? "" : $"  (taught: {Quote(expected)})")}");
        }

        w.WriteLine($"{right}/{questions.Count} answers as taught, in {clock.Elapsed.TotalSeconds:F0} s");
        return check && right < questions.Count ? 1 : 0;
    }

    // Greedy answers to all questions at once: the generation engine batches them, each up to its end-of-turn token.
    private static List<string> Answers(EngineModel engine, string folder, IEnumerable<string> questions)
    {
        using var generation = new GenerationEngine(engine, new GenerationEngineOptions { MaxBatch = 8, MaxSequenceLength = 256, StepTokens = 256 });
        var text = TextGenerator.ForFolder(generation, folder);
        var options = new TextGenerationOptions { MaxTokens = 32 };
        var tasks = questions.Select(q => text.GenerateAsync(text.EncodeChat([new ChatMessage("user", q)]), options)).ToArray();
        return [.. Task.WhenAll(tasks).GetAwaiter().GetResult().Select(r => r.Text)];
    }

    private static string Quote(string s) => "\"" + string.Concat(s.Select(c => char.IsControl(c) || char.IsSurrogate(c) || c == '\uFFFD' ? '·' : c)) + "\"";
}
