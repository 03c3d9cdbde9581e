using System.CommandLine;
using System.Globalization;
using System.Text.Json.Nodes;
using QLoRA.Core.HuggingFace;
using QLoRA.Core.Peft;
using QLoRA.Runtime.Devices;
using QLoRA.Runtime.Engine;
using QLoRA.Runtime.Models;
using QLoRA.Runtime.Training;
using QLoRA.Text;
using QLoRA.Text.Data;
using QLoRA.Text.Tokenization;

namespace QLoRA.Cli;

/// <summary>
/// <c>qlora train --model M --data FILE.jsonl</c>: LoRA fine-tuning of the model (4-bit base) on a JSONL dataset with the
/// checkpoint's tokenizer and chat template, QLoRA's defaults unless told otherwise; writes the PEFT adapter
/// (OUTPUT/adapter), metrics.jsonl and checkpoints. Ctrl-C finishes the step, writes a checkpoint and exits.
/// </summary>
internal static class TrainCommand
{
    public static Command Create(CommandContext context)
    {
        var model = new Option<string>("--model") { Description = "The base model: a folder, or an id in the local Hugging Face cache", Required = true };
        var data = new Option<string>("--data") { Description = "Training data: JSONL of {\"text\"}, {\"prompt\",\"completion\"} or {\"messages\"}", Required = true };
        var output = new Option<string>("--output") { Description = "Where the adapter, metrics and checkpoints go", DefaultValueFactory = _ => "qlora-output" };
        var eval = new Option<string?>("--eval") { Description = "Evaluation data (JSONL)" };
        var steps = new Option<int>("--steps") { Description = "Optimizer steps (0: as many as --epochs give)", DefaultValueFactory = _ => 0 };
        var epochs = new Option<int>("--epochs") { Description = "Passes over the data", DefaultValueFactory = _ => 1 };
        var lr = new Option<double>("--lr") { Description = "Peak learning rate", DefaultValueFactory = _ => 2e-4 };
        var rank = new Option<int>("--rank") { Description = "LoRA rank r", DefaultValueFactory = _ => 64 };
        var alpha = new Option<double>("--alpha") { Description = "LoRA alpha", DefaultValueFactory = _ => 16 };
        var dropout = new Option<double>("--dropout") { Description = "LoRA dropout", DefaultValueFactory = _ => 0.05 };
        var targets = new Option<string>("--targets") { Description = "Modules to adapt: all-linear or a comma-separated list (q_proj,v_proj)", DefaultValueFactory = _ => "all-linear" };
        var modulesToSave = new Option<string?>("--modules-to-save") { Description = "Modules trained whole besides the adapters (PEFT's modules_to_save): a comma-separated list of embed_tokens, lm_head, norm, input_layernorm, post_attention_layernorm" };
        var batch = new Option<int>("--batch") { Description = "Sequences' worth of tokens per micro-batch (× --seq-len)", DefaultValueFactory = _ => 1 };
        var accumulation = new Option<int>("--grad-accum") { Description = "Micro-batches per optimizer step", DefaultValueFactory = _ => 16 };
        var seqLen = new Option<int>("--seq-len") { Description = "Longest example in tokens (longer ones are cut)", DefaultValueFactory = _ => 1024 };
        var optimizer = new Option<string>("--optimizer") { Description = "paged_adamw_32bit, paged_adamw_8bit, adamw_8bit or adamw", DefaultValueFactory = _ => "paged_adamw_32bit" };
        var checkpointing = new Option<bool>("--checkpointing") { Description = "Gradient checkpointing", DefaultValueFactory = _ => true };
        var loftQ = new Option<bool>("--loftq") { Description = "LoftQ initialization from the model's dense weights" };
        var resume = new Option<string?>("--resume") { Description = "A checkpoint folder to resume from" };
        var seed = new Option<int>("--seed") { Description = "Seed of initialization, dropout and shuffling", DefaultValueFactory = _ => 42 };
        var command = new Command("train", "Fine-tune LoRA adapters on a JSONL dataset")
        {
            model, data, output, eval, steps, epochs, lr, rank, alpha, dropout, targets, modulesToSave, batch, accumulation, seqLen, optimizer, checkpointing, loftQ, resume, seed,
        };
        command.SetAction((parsed, cancellation) =>
        {
            string folder = HubCache.ResolveOrDownload(parsed.GetValue(model)!);
            var kind = parsed.GetValue(optimizer)!.ToLowerInvariant() switch
            {
                "paged_adamw_32bit" => OptimizerKind.PagedAdamW32Bit,
                "paged_adamw_8bit" => OptimizerKind.PagedAdamW8Bit,
                "adamw_8bit" => OptimizerKind.AdamW8Bit,
                "adamw" or "adamw_torch" => OptimizerKind.AdamW,
                var other => throw new CliException($"--optimizer '{other}' is not paged_adamw_32bit, paged_adamw_8bit, adamw_8bit or adamw"),
            };
            string targetList = parsed.GetValue(targets)!;
            JsonNode targetJson = targetList == LoraConfig.AllLinear ? JsonValue.Create(targetList) : new JsonArray([.. targetList.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Select(t => (JsonNode?)t)]);
            var loraJson = new JsonObject { ["r"] = parsed.GetValue(rank), ["lora_alpha"] = parsed.GetValue(alpha), ["lora_dropout"] = parsed.GetValue(dropout), ["target_modules"] = targetJson, ["base_model_name_or_path"] = parsed.GetValue(model) };
            if (parsed.GetValue(modulesToSave) is string saved)
            {
                loraJson["modules_to_save"] = new JsonArray([.. saved.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Select(m => (JsonNode?)m)]);
            }

            LoraConfig lora = LoraConfig.Parse(loraJson.ToJsonString(), "--rank/--alpha/--dropout/--targets/--modules-to-save");
            int seqLength = parsed.GetValue(seqLen), micro = parsed.GetValue(batch) * seqLength;
            var chat = new ChatFormatter(HfTokenizer.FromFolder(folder));
            var datasetOptions = new SftDatasetOptions { MaxSequenceLength = seqLength, Seed = (ulong)parsed.GetValue(seed) };
            SftDataset train = SftDataset.Load(parsed.GetValue(data)!, chat, datasetOptions);
            IReadOnlyList<TrainingExample> evalExamples = parsed.GetValue(eval) is string evalPath ? SftDataset.Load(evalPath, chat, datasetOptions with { Shuffle = false }).Train : [];
            if (train.Train.Count == 0)
            {
                throw new CliException($"{parsed.GetValue(data)}: no usable training example");
            }

            int accumulate = parsed.GetValue(accumulation), epochCount = parsed.GetValue(epochs);
            int rows = Packer.Pack(train.Train, micro).Count;
            int maxSteps = parsed.GetValue(steps) > 0 ? parsed.GetValue(steps) : Math.Max(1, epochCount * ((rows + accumulate - 1) / accumulate));
            using Device device = Device.Best();
            using LlamaForCausalLM loaded = LlamaForCausalLM.Load(device, folder);
            var options = new TrainerOptions
            {
                MaxSteps = maxSteps, LearningRate = parsed.GetValue(lr), GradientAccumulation = accumulate, Optimizer = kind, Seed = parsed.GetValue(seed),
                LoftQ = parsed.GetValue(loftQ) ? new LoftQOptions(folder) : null,
            };
            using var trainer = new LoraTrainer(device, loaded.ToEngineModel(), lora, options, new EngineOptions(micro, parsed.GetValue(checkpointing), accumulate));
            context.Output.WriteLine($"training {Path.GetFileName(folder)} on {device.Description}: {train.Train.Count} examples in {rows} packed rows, {maxSteps} steps of {accumulate} × {micro} tokens, r{lora.R} α{lora.LoraAlpha}, {kind}; memory estimate {trainer.Estimate.TotalBytes / 1048576.0:F0} MiB");
            var clock = System.Diagnostics.Stopwatch.StartNew();
            string Line(StepReport r)
            {
                TimeSpan eta = r.Step == 0 ? TimeSpan.Zero : clock.Elapsed / r.Step * (maxSteps - r.Step);
                return string.Create(CultureInfo.InvariantCulture,
                    $"step {r.Step}/{maxSteps}  loss {r.Loss:F4}  lr {r.LearningRate:G3}  grad norm {r.GradientNorm:F3}  {r.TokensPerSecond:F0} tok/s  mem {r.DeviceMemoryBytes / 1048576.0:F0} MiB  ETA {eta:hh\\:mm\\:ss}{(r.Skipped ? "  (skipped: not finite)" : "")}");
            }
            using var interrupt = new CancellationTokenSource();
            using CancellationTokenRegistration link = cancellation.Register(interrupt.Cancel);
            ConsoleCancelEventHandler onCtrlC = (_, e) => { e.Cancel = true; interrupt.Cancel(); };
            Console.CancelKeyPress += onCtrlC;
            try
            {
                string outputDir = parsed.GetValue(output)!;
                var fit = new FitOptions
                {
                    Epochs = Math.Max(epochCount, (maxSteps * accumulate / Math.Max(1, rows)) + 1), OutputDirectory = outputDir,
                    CheckpointEvery = Math.Max(1, maxSteps / 4), EvalEvery = evalExamples.Count > 0 ? Math.Max(1, maxSteps / 4) : 0,
                    ShuffleSeed = (ulong)parsed.GetValue(seed), ResumeFrom = parsed.GetValue(resume),
                };

                // On a terminal a live line (step, loss, lr, tokens/s, memory, ETA); redirected, one plain line per step.
                FitResult result = Progress.Run(context, $"training: step 0/{maxSteps}", report =>
                {
                    trainer.StepCompleted += r =>
                    {
                        string line = Line(r);
                        report(line);
                        if (context.Interactive && (r.Step % Math.Max(1, maxSteps / 20) == 0 || r.Step == maxSteps))
                        {
                            context.Output.WriteLine(line); // a trail of lines above the live one
                        }
                    };
                    return trainer.Fit(train.Train, evalExamples, fit, interrupt.Token);
                });
                string metrics = Path.Combine(outputDir, "metrics.jsonl");
                if (File.Exists(metrics) && LossCurve.Write(metrics, Path.Combine(outputDir, "loss.png")))
                {
                    context.Output.WriteLine($"loss curve: {Path.Combine(Path.GetFullPath(outputDir), "loss.png")}");
                }

                context.Output.WriteLine(result.Cancelled
                    ? $"interrupted at step {result.Steps}: resume with --resume {result.LastCheckpoint}"
                    : $"done: {result.Steps} steps, last loss {result.LastLoss.ToString("F4", CultureInfo.InvariantCulture)}{(result.EvalLoss is double e ? $", eval loss {e.ToString("F4", CultureInfo.InvariantCulture)}" : "")}; adapter in {Path.Combine(Path.GetFullPath(outputDir), "adapter")}");
                return Task.FromResult(0);
            }
            finally
            {
                Console.CancelKeyPress -= onCtrlC;
            }
        });
        return command;
    }
}
