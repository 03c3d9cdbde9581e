using QLoRA.Core.Peft;
using QLoRA.Runtime.Devices;
using QLoRA.Runtime.Engine;
using QLoRA.Runtime.Generation;
using QLoRA.Runtime.Models;
using QLoRA.Runtime.Training;
using QLoRA.Text;
using QLoRA.Text.Data;
using QLoRA.Text.Tokenization;
using QLoRABot;
using ChatMessage = QLoRA.Text.Templates.ChatMessage;

// dotnet run -- train [--steps N]   fine-tunes LoRA on data/train.jsonl and saves the adapter (PEFT format) in out/adapter
// dotnet run -- chat                chats with the model and, once trained, the adapter (/exit quits)
string command = args.FirstOrDefault() ?? "";
int steps = args.SkipWhile(a => a != "--steps").Skip(1).Select(int.Parse).FirstOrDefault(60);
string adapterFolder = Path.Combine("out", "adapter");

// The base model: the weights the build quantized (QLoRABaseModel in the project file), else a Hugging Face id
// (downloaded into the local Hugging Face cache once, quantized to 4-bit when it loads), else a tiny random model.
string modelFolder = Path.Combine(AppContext.BaseDirectory, "model");
const string ModelId = "QLORA_MODEL_ID";
if (!File.Exists(Path.Combine(modelFolder, "config.json")) && ModelId.Contains('/'))
{
    modelFolder = QLoRA.Core.HuggingFace.HubCache.ResolveOrDownload(ModelId);
}
else if (!File.Exists(Path.Combine(modelFolder, "config.json")))
{
    modelFolder = Path.Combine(AppContext.BaseDirectory, "tiny-random-model");
    if (!File.Exists(Path.Combine(modelFolder, "model.safetensors")))
    {
        Console.WriteLine("No base model configured (QLoRABaseModel in the project file): using a tiny random model.");
        RandomLlama.Write(modelFolder);
    }
}

using var device = Device.Best();
using var model = BotModel.Load(device, modelFolder);
var tokenizer = HfTokenizer.FromFolder(modelFolder);

switch (command)
{
    case "train":
    {
        var chat = new ChatFormatter(tokenizer);
        string data = Path.Combine(AppContext.BaseDirectory, "data", "train.jsonl");
        SftDataset dataset = SftDataset.Load(data, chat, new SftDatasetOptions { MaxSequenceLength = 256 });
        string targets = "LORA_TARGETS";
        string targetJson = targets == "all-linear" ? "\"all-linear\"" : "[" + string.Join(", ", targets.Split(',').Select(t => $"\"{t.Trim()}\"")) + "]";
        var lora = LoraConfig.Parse($$"""{"r": {{Settings.Rank}}, "lora_alpha": {{Settings.Alpha}}, "lora_dropout": 0.0, "target_modules": {{targetJson}}}""");
        var options = new TrainerOptions { MaxSteps = steps, LearningRate = 3e-3, WarmupRatio = 0.05, MaxGradNorm = 1.0, GradientAccumulation = 1 };
        using var trainer = new LoraTrainer(device, model.ToEngineModel(), lora, options, new EngineOptions(MaxTokens: 256, GradientCheckpointing: true));
        trainer.StepCompleted += r =>
        {
            if (r.Step % 10 == 0 || r.Step == steps)
            {
                Console.WriteLine($"step {r.Step}/{steps}  loss {r.Loss:F3}");
            }
        };
        trainer.Fit(dataset.Train, dataset.Eval, new FitOptions { Epochs = steps, OutputDirectory = "out" });
        Console.WriteLine($"Adapter saved in {Path.GetFullPath(adapterFolder)}. Try: dotnet run -- chat");
        return 0;
    }

    case "chat":
    {
        using var engine = new GenerationEngine(model.ToEngineModel(), new GenerationEngineOptions { MaxBatch = 1, MaxSequenceLength = 256 });
        string? adapter = null;
        if (File.Exists(Path.Combine(adapterFolder, LoraAdapter.WeightsFileName)))
        {
            engine.Adapters.Load("bot", adapterFolder);
            adapter = "bot";
        }

        var generator = new TextGenerator(engine, tokenizer, GenerationConfig.Load(modelFolder));
        var options = new TextGenerationOptions { MaxTokens = 64, Adapter = adapter };
        var history = new List<ChatMessage>();
        Console.WriteLine(adapter is null ? "Chatting with the base model (run 'dotnet run -- train' first to add the adapter). /exit quits." : "Chatting with the fine-tuned adapter. /exit quits.");
        while (true)
        {
            Console.Write("> ");
            string? line = Console.ReadLine();
            if (line is null || line.Trim() == "/exit")
            {
                return 0;
            }

            history.Add(new ChatMessage("user", line));
            var answer = new System.Text.StringBuilder();
            await foreach (TextDelta delta in generator.StreamAsync(generator.EncodeChat(history), options))
            {
                answer.Append(delta.Text);
                Console.Write(delta.Text);
            }

            Console.WriteLine();
            history.Add(new ChatMessage("assistant", answer.ToString()));
        }
    }

    default:
        Console.WriteLine("usage: dotnet run -- train [--steps N] | chat");
        return 2;
}

/// <summary>The LoRA settings this app was created with (dotnet new qlora-finetune --rank/--alpha/--targets).</summary>
internal static class Settings
{
    public const int Rank = 16 /*LORA_RANK*/;
    public const int Alpha = 32 /*LORA_ALPHA*/;
}
