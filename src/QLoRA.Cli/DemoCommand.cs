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
        var command = new Command("demo", "Quantize, fine-tune and compare a tiny model end to end (no download)") { check, output, steps };
        command.SetAction(parsed => Run(context, parsed.GetValue(output)!, parsed.GetValue(steps), parsed.GetValue(check)));
        return command;
    }

    private static int Run(CommandContext context, string output, int steps, bool check)
    {
        TextWriter w = context.Output;
        var clock = Stopwatch.StartNew();
        string root = Directory.CreateDirectory(output).FullName;
        string dense = Path.Combine(root, "tiny-bf16");
        long bf16Bytes = WriteRandomModel(dense);
        string nf4 = Path.Combine(root, "tiny-nf4");
        var job = new WeightsJob([Path.Combine(dense, "model.safetensors")], Path.Combine(dense, "config.json"), "tiny-nf4", root, QuantizationOptions.Default, ["lm_head", "embed_tokens"]) { WriteManifest = false };
        new WeightsQuantizer(_ => { }).Run(job);
        long nf4Bytes = new FileInfo(Path.Combine(nf4, "model.safetensors")).Length;
        w.WriteLine($"1. a tiny Llama (hidden 128, 4 layers, vocab {ByteTokenizer.VocabSize}, random weights) quantized to NF4 + double quantization: {InspectCommand.Size(bf16Bytes)} bf16 -> {InspectCommand.Size(nf4Bytes)} ({100.0 * nf4Bytes / bf16Bytes:F0}%; embeddings and lm_head stay bf16)");

        HfTokenizer tokenizer = HfTokenizer.FromFolder(nf4);
        var chat = new ChatFormatter(tokenizer);
        string data = Path.Combine(AppContext.BaseDirectory, "demo", "demo.jsonl");
        SftDataset dataset = SftDataset.Load(data, chat, new SftDatasetOptions { MaxSequenceLength = 64, Shuffle = false });
        var questions = JsonlReader.Read(data).Records.Select(r => (Question: r.Messages![0].Content!, Answer: r.Messages![1].Content!)).ToList();
        using Device device = Device.Best();
        using LlamaForCausalLM model = LlamaForCausalLM.Load(device, nf4);
        EngineModel engine = model.ToEngineModel();
        w.WriteLine($"2. before training ({device.Description}):");
        foreach ((string question, _) in questions)
        {
            w.WriteLine($"   {question} -> {Quote(Answer(engine, chat, tokenizer, question))}");
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
        foreach ((string question, string expected) in questions)
        {
            string answer = Answer(engine, chat, tokenizer, question);
            right += answer == expected ? 1 : 0;
            w.WriteLine($"   {question} -> {Quote(answer)}{(answer == expected ? "" : $"  (taught: {Quote(expected)})")}");
        }

        w.WriteLine($"{right}/{questions.Count} answers as taught, in {clock.Elapsed.TotalSeconds:F0} s");
        return check && right < questions.Count ? 1 : 0;
    }

    // Greedy decoding of the assistant's turn, up to its end-of-turn token (the full prefix each step: a tiny model).
    private static string Answer(EngineModel engine, ChatFormatter chat, HfTokenizer tokenizer, string question)
    {
        var ids = new List<int>(chat.EncodePrompt([new ChatMessage("user", question)]));
        int start = ids.Count, vocab = engine.Config.VocabSize;
        for (int i = 0; i < 32; i++)
        {
            float[] logits = engine.Logits(CollectionsMarshal.AsSpan(ids));
            ReadOnlySpan<float> row = logits.AsSpan((ids.Count - 1) * vocab, vocab);
            int next = row.IndexOf(System.Numerics.Tensors.TensorPrimitives.Max(row));
            if (next == ByteTokenizer.EndOfTurn)
            {
                break;
            }

            ids.Add(next);
        }

        return tokenizer.Decode(CollectionsMarshal.AsSpan(ids)[start..], skipSpecialTokens: true);
    }

    private static string Quote(string s) => "\"" + string.Concat(s.Select(c => char.IsControl(c) || char.IsSurrogate(c) || c == '\uFFFD' ? '·' : c)) + "\"";

    // A Llama checkpoint of random bf16 weights (N(0, 0.02²)-like, norms 1) with the byte-level tokenizer files.
    private static long WriteRandomModel(string folder)
    {
        const int hidden = 128, inter = 352, layers = 4, heads = 4, kvHeads = 2;
        int vocab = ByteTokenizer.VocabSize;
        Directory.CreateDirectory(folder);
        File.WriteAllText(Path.Combine(folder, "config.json"), $$"""
            {"model_type": "llama", "hidden_size": {{hidden}}, "intermediate_size": {{inter}}, "num_hidden_layers": {{layers}}, "num_attention_heads": {{heads}},
             "num_key_value_heads": {{kvHeads}}, "vocab_size": {{vocab}}, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 256, "torch_dtype": "bfloat16"}
            """);
        ByteTokenizer.WriteFiles(folder);
        var rng = new Random(1234);
        var tensors = new List<(SafeTensorSpec, ReadOnlyMemory<byte>)>();
        void Add(string name, double scale, params long[] shape)
        {
            long n = shape.Aggregate(1L, (a, b) => a * b);
            BFloat16[] v = [.. Enumerable.Range(0, (int)n).Select(_ => BFloat16.FromSingle(shape.Length == 1 ? 1f : (float)((rng.NextDouble() - 0.5) * 2 * scale)))];
            tensors.Add((new SafeTensorSpec(name, DType.BF16, shape), MemoryMarshal.AsBytes(v.AsSpan()).ToArray()));
        }

        Add("model.embed_tokens.weight", 0.5, vocab, hidden);
        for (int l = 0; l < layers; l++)
        {
            string p = $"model.layers.{l}.";
            Add(p + "input_layernorm.weight", 0, hidden);
            Add(p + "self_attn.q_proj.weight", 0.05, hidden, hidden);
            Add(p + "self_attn.k_proj.weight", 0.05, kvHeads * hidden / heads, hidden);
            Add(p + "self_attn.v_proj.weight", 0.05, kvHeads * hidden / heads, hidden);
            Add(p + "self_attn.o_proj.weight", 0.05, hidden, hidden);
            Add(p + "post_attention_layernorm.weight", 0, hidden);
            Add(p + "mlp.gate_proj.weight", 0.05, inter, hidden);
            Add(p + "mlp.up_proj.weight", 0.05, inter, hidden);
            Add(p + "mlp.down_proj.weight", 0.05, hidden, inter);
        }

        Add("model.norm.weight", 0, hidden);
        Add("lm_head.weight", 0.05, vocab, hidden);
        SafeTensorsWriter.Save(Path.Combine(folder, "model.safetensors"), tensors);
        return new FileInfo(Path.Combine(folder, "model.safetensors")).Length;
    }
}
