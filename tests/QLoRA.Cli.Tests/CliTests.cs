using System.Runtime.InteropServices;
using System.Text.Json.Nodes;
using QLoRA.Core;
using QLoRA.Core.BitsAndBytes;
using QLoRA.Core.Numerics;
using QLoRA.Core.Quantization;
using QLoRA.Core.SafeTensors;

namespace QLoRA.Cli.Tests;

/// <summary>
/// The qlora command line run in-process on a tiny checkpoint: each command end to end, exit codes (0, 1 for user
/// errors with one message and no stack trace, 2 for usage errors), nothing written on failure, help snapshots.
/// </summary>
public sealed class CliTests
{
    private static (int Code, string Out, string Err) Qlora(params string[] args) => QloraWithInput(null, args);

    private static (int Code, string Out, string Err) QloraWithInput(string? input, params string[] args)
    {
        var output = new StringWriter();
        var error = new StringWriter();
        int code = QloraCli.Run(args, output, error, input: new StringReader(input ?? ""));
        return (code, output.ToString(), error.ToString());
    }

    // A tiny Llama folder (hidden 64, 2 layers) with bf16 weights, a config.json and a tokenizer file to carry along.
    private static (string Folder, Dictionary<string, byte[]> Tensors) Checkpoint(int vocab = 100)
    {
        string dir = Directory.CreateTempSubdirectory("qlora-cli-").FullName;
        File.WriteAllText(Path.Combine(dir, "config.json"), $$"""{"model_type":"llama","hidden_size":64,"intermediate_size":128,"num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,"vocab_size":{{vocab}},"rms_norm_eps":1e-5,"torch_dtype":"bfloat16"}""");
        File.WriteAllText(Path.Combine(dir, "tokenizer_config.json"), """{"bos_token": "<s>"}""");
        var tensors = new Dictionary<string, byte[]>();
        var rng = new Random(1);
        void Add(string name, params long[] shape)
        {
            long n = shape.Aggregate(1L, (a, b) => a * b);
            tensors[name] = MemoryMarshal.AsBytes(Enumerable.Range(0, (int)n).Select(_ => BFloat16.FromSingle((float)((rng.NextDouble() - 0.5) * 0.2))).ToArray().AsSpan()).ToArray();
        }

        Add("model.embed_tokens.weight", vocab, 64);
        Add("model.norm.weight", 64);
        Add("lm_head.weight", vocab, 64);
        for (int l = 0; l < 2; l++)
        {
            string p = $"model.layers.{l}.";
            Add(p + "input_layernorm.weight", 64);
            Add(p + "post_attention_layernorm.weight", 64);
            Add(p + "self_attn.q_proj.weight", 64, 64);
            Add(p + "self_attn.k_proj.weight", 32, 64);
            Add(p + "self_attn.v_proj.weight", 32, 64);
            Add(p + "self_attn.o_proj.weight", 64, 64);
            Add(p + "mlp.gate_proj.weight", 128, 64);
            Add(p + "mlp.up_proj.weight", 128, 64);
            Add(p + "mlp.down_proj.weight", 64, 128);
        }

        SafeTensorsWriter.Save(Path.Combine(dir, "model.safetensors"),
            tensors.Select(t => (new SafeTensorSpec(t.Key, DType.BF16, t.Key.Contains("norm.", StringComparison.Ordinal) ? [64] : Shape(t.Key, vocab)), (ReadOnlyMemory<byte>)t.Value)));
        return (dir, tensors);
    }

    private static long[] Shape(string name, int vocab = 100) => name switch
    {
        _ when name.Contains("embed", StringComparison.Ordinal) || name.StartsWith("lm_head", StringComparison.Ordinal) => [vocab, 64],
        _ when name.Contains("q_proj", StringComparison.Ordinal) || name.Contains("o_proj", StringComparison.Ordinal) => [64, 64],
        _ when name.Contains("k_proj", StringComparison.Ordinal) || name.Contains("v_proj", StringComparison.Ordinal) => [32, 64],
        _ when name.Contains("down_proj", StringComparison.Ordinal) => [64, 128],
        _ => [128, 64],
    };

    [Fact]
    public void QuantizeThenDequantizeMatchQLoRACoresQuantizerBitForBit()
    {
        (string folder, Dictionary<string, byte[]> source) = Checkpoint();
        string nf4 = Path.Combine(Directory.CreateTempSubdirectory("qlora-cli-").FullName, "tiny-nf4");
        (int code, string output, string error) = Qlora("quantize", folder, nf4);
        Assert.True(code == 0, error);
        Assert.Contains("quantizing model.layers.1.mlp.down_proj", output); // redirected: progress as plain lines
        Assert.Contains("\"quant_method\": \"bitsandbytes\"", File.ReadAllText(Path.Combine(nf4, "config.json")));
        Assert.True(File.Exists(Path.Combine(nf4, "tokenizer_config.json")));
        Assert.Empty(Directory.GetFiles(Path.GetDirectoryName(nf4)!, "*.qlora.json")); // no build manifest from the CLI

        string dense = Path.Combine(Path.GetDirectoryName(nf4)!, "tiny-bf16");
        (code, _, error) = Qlora("dequantize", nf4, dense);
        Assert.True(code == 0, error);
        Assert.DoesNotContain("quantization_config", File.ReadAllText(Path.Combine(dense, "config.json")));
        using SafeTensorsFile quantized = SafeTensorsFile.Open(Path.Combine(nf4, "model.safetensors"));
        using SafeTensorsFile decoded = SafeTensorsFile.Open(Path.Combine(dense, "model.safetensors"));
        foreach ((string name, byte[] bytes) in source)
        {
            if (!name.Contains("_proj.", StringComparison.Ordinal))
            {
                Assert.Equal(bytes, quantized.GetBytes(name).ToArray()); // kept dense, bit for bit
                Assert.Equal(bytes, decoded.GetBytes(name).ToArray());
                continue;
            }

            QuantizedTensor reference = QuantizedTensor.Quantize(bytes, DType.BF16, Shape(name), QuantizationOptions.Default, name);
            Assert.Equal(reference.Packed.ToArray(), BnbFourBitTensor.Read(quantized, name).Packed.ToArray());
            byte[] expected = TensorData.FromSingleAsBFloat16(reference.DequantizeToSingle(), Shape(name)).Data;
            Assert.Equal(expected, decoded.GetBytes(name).ToArray());
        }

        // A single file in: a single 4-bit file out, FP4 here.
        string file = Path.Combine(Path.GetDirectoryName(nf4)!, "one.safetensors");
        (code, output, error) = Qlora("quantize", Path.Combine(folder, "model.safetensors"), file, "--quant-type", "fp4", "--block-size", "128", "--double-quant", "false");
        Assert.True(code == 0, error);
        using SafeTensorsFile one = SafeTensorsFile.Open(file);
        QuantizedTensor q = BnbFourBitTensor.Read(one, "model.layers.0.mlp.up_proj.weight");
        Assert.Equal((QuantType.Fp4, 128, false), (q.State.Type, q.State.BlockSize, q.State.IsDoubleQuantized));
        Assert.Equal(QuantizedTensor.Quantize(source["model.layers.0.mlp.up_proj.weight"], DType.BF16, [128, 64], new QuantizationOptions(QuantType.Fp4, 128, false)).Packed.ToArray(), q.Packed.ToArray());
    }

    [Fact]
    public void InspectListsTensorsQuantizationFootprintAndConfig()
    {
        (string folder, _) = Checkpoint();
        string nf4 = Path.Combine(Directory.CreateTempSubdirectory("qlora-cli-").FullName, "tiny");
        Assert.Equal(0, Qlora("quantize", folder, nf4).Code);
        (int code, string output, string error) = Qlora("inspect", nf4);
        Assert.True(code == 0, error);
        Assert.Contains("| model.layers.0.self_attn.q_proj.weight | BF16 | [64, 64] |", output);
        Assert.Contains("nf4, block 64, double-quantized", output);
        Assert.Contains("config: llama, hidden 64, intermediate 128, 2 layers, 4 heads (2 kv, head_dim 16), vocab 100", output);

        (code, output, _) = Qlora("inspect", nf4, "--json");
        Assert.Equal(0, code);
        JsonNode json = JsonNode.Parse(output)!;
        Assert.Equal(21, json["tensors"]!.AsArray().Count); // 4-bit tensors once, their absmax and maps folded in
        long bf16 = json["footprint_bytes"]!["bf16"]!.GetValue<long>(), nf4Bytes = json["footprint_bytes"]!["nf4"]!.GetValue<long>(), dq = json["footprint_bytes"]!["nf4_double_quant"]!.GetValue<long>();
        long linear = 2 * ((64 * 64 * 2) + (32 * 64 * 2) + (128 * 64 * 3)), dense = json["parameters"]!.GetValue<long>() - linear;
        Assert.Equal(2 * (dense + linear), bf16);
        Assert.Equal((2 * dense) + (linear / 2) + (4 * (linear / 64)), nf4Bytes); // codes + one f32 absmax per 64
        // Double quantization: one byte per absmax, an f32 per 256 of them, and the 256-entry nested map per tensor.
        long[] linearSizes = [.. Enumerable.Repeat(new long[] { 64 * 64, 32 * 64, 32 * 64, 64 * 64, 128 * 64, 128 * 64, 64 * 128 }, 2).SelectMany(x => x)];
        Assert.Equal((2 * dense) + linearSizes.Sum(n => (n / 2) + (n / 64) + (4 * (((n / 64) + 255) / 256)) + 1024), dq);
        Assert.True(nf4Bytes < bf16);
        Assert.Equal("nf4", json["tensors"]!.AsArray().First(t => t!["name"]!.GetValue<string>() == "model.layers.1.mlp.up_proj.weight")!["quant"]!["type"]!.GetValue<string>());
    }

    [Fact]
    public void MalformedFilesAndBadArgumentsGiveOneMessageTheRightExitCodeAndWriteNothing()
    {
        string dir = Directory.CreateTempSubdirectory("qlora-cli-").FullName;
        var corpus = new Dictionary<string, byte[]>
        {
            ["short.safetensors"] = [1, 2, 3],
            ["header-too-long.safetensors"] = [.. BitConverter.GetBytes(1L << 40), .. "{}"u8.ToArray()],
            ["not-json.safetensors"] = [.. BitConverter.GetBytes(8L), .. "{nonsens"u8.ToArray()],
            ["out-of-range.safetensors"] = Header("""{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,64]}}""", 16),
            ["bad-dtype.safetensors"] = Header("""{"w":{"dtype":"Q7","shape":[4],"data_offsets":[0,16]}}""", 16),
        };
        foreach ((string name, byte[] bytes) in corpus)
        {
            string path = Path.Combine(dir, name);
            File.WriteAllBytes(path, bytes);
            foreach (string[] args in new[] { new[] { "inspect", path }, ["quantize", path, path + ".out"], ["dequantize", path, path + ".out"] })
            {
                (int code, string output, string error) = Qlora(args);
                Assert.True(code == QloraCli.UserError, $"{args[0]} {name}: exit {code}, {error}{output}");
                Assert.StartsWith("qlora: ", error);
                Assert.Contains(name, error);
                Assert.DoesNotContain("   at ", error); // no stack trace without --verbose
                Assert.False(File.Exists(path + ".out"), $"{args[0]} {name} left output behind");
            }
        }

        Assert.Contains("   at ", Qlora("inspect", Path.Combine(dir, "short.safetensors"), "--verbose").Err);
        (string folder, _) = Checkpoint();
        string target = Path.Combine(dir, "never");
        Assert.Equal(QloraCli.UserError, Qlora("quantize", folder, target, "--quant-type", "nf3").Code);
        Assert.Equal(QloraCli.UserError, Qlora("quantize", folder, target, "--block-size", "48").Code);
        Assert.Equal(QloraCli.UserError, Qlora("dequantize", folder, target, "--dtype", "f8").Code);
        Assert.False(Directory.Exists(target));
        Assert.Equal(QloraCli.UsageError, Qlora("inspect").Code);
        Assert.Equal(QloraCli.UsageError, Qlora("quantize", folder).Code);
        Assert.Equal(QloraCli.UsageError, Qlora("frobnicate").Code);
        Assert.Equal(QloraCli.UsageError, Qlora("inspect", folder, "--colour").Code);
        Assert.Equal(QloraCli.UserError, Qlora("inspect", Path.Combine(dir, "missing")).Code);
    }

    private static byte[] Header(string json, int dataBytes)
    {
        byte[] header = System.Text.Encoding.UTF8.GetBytes(json);
        return [.. BitConverter.GetBytes((long)header.Length), .. header, .. new byte[dataBytes]];
    }

    [Fact]
    public void ScoreGivesTheLibrarysLogitsAndTheirPerplexity()
    {
        (string folder, _) = Checkpoint();
        string logitsPath = Path.Combine(Directory.CreateTempSubdirectory("qlora-cli-").FullName, "logits.json");
        int[] ids = [3, 17, 42, 5, 99];
        (int code, string output, string error) = Qlora("score", "--model", folder, "--tokens", string.Join(",", ids), "--logits-json", logitsPath);
        Assert.True(code == 0, error);
        JsonNode json = JsonNode.Parse(File.ReadAllText(logitsPath))!;
        Assert.Equal(ids, json["input_ids"]!.AsArray().Select(n => n!.GetValue<int>()));
        float[] written = [.. json["logits"]!.AsArray().SelectMany(r => r!.AsArray().Select(v => v!.GetValue<float>()))];
        using var device = QLoRA.Runtime.Devices.Device.Cpu();
        using (var model = QLoRA.Runtime.Models.LlamaForCausalLM.Load(device, folder))
        {
            Assert.Equal(model.Forward(ids), written); // the library's logits, bit for bit through the JSON
        }

        // Perplexity from those logits, in double, written out here.
        double nll = 0;
        for (int t = 0; t + 1 < ids.Length; t++)
        {
            double[] row = [.. written.Skip(t * 100).Take(100).Select(v => (double)v)];
            double max = row.Max();
            nll -= row[ids[t + 1]] - max - Math.Log(row.Sum(z => Math.Exp(z - max)));
        }

        Assert.Contains(string.Create(System.Globalization.CultureInfo.InvariantCulture, $"4 tokens scored: mean NLL {nll / 4:F4}, perplexity {Math.Exp(nll / 4):F3}"), output);

        (code, _, error) = Qlora("score", "--model", folder, "--tokens", string.Join(",", ids), "--quantize", "none", "--logits-json", logitsPath);
        Assert.True(code == 0, error);
        using (var dense = QLoRA.Runtime.Models.LlamaForCausalLM.Load(device, folder, new QLoRA.Modeling.LoadOptions(KeepProjectionsDense: true)))
        {
            float[] denseLogits = [.. JsonNode.Parse(File.ReadAllText(logitsPath))!["logits"]!.AsArray().SelectMany(r => r!.AsArray().Select(v => v!.GetValue<float>()))];
            Assert.Equal(dense.Forward(ids), denseLogits);
            Assert.NotEqual(written, denseLogits);
        }

        Assert.Equal(QloraCli.UserError, Qlora("score", "--model", folder, "--tokens", "1,100").Code); // outside the vocabulary
        Assert.Equal(QloraCli.UserError, Qlora("score", "--model", folder, "--tokens", "1,2", "--text", "hi").Code);
        Assert.Equal(QloraCli.UserError, Qlora("score", "--model", folder, "--tokens", "1,x").Code);
        Assert.Equal(QloraCli.UserError, Qlora("score", "--model", folder, "--text", "no tokenizer.json here").Code);
        Assert.Equal(QloraCli.UsageError, Qlora("score", "--tokens", "1,2").Code); // --model is required
    }

    [Fact]
    public void MergeWritesTheLibrarysMergedFolder()
    {
        (string folder, _) = Checkpoint();
        string work = Directory.CreateTempSubdirectory("qlora-cli-").FullName;
        var rng = new Random(2);
        float[] a = [.. Enumerable.Range(0, 4 * 64).Select(_ => (float)(rng.NextDouble() - 0.5))], b = [.. Enumerable.Range(0, 64 * 4).Select(_ => (float)(rng.NextDouble() - 0.5) * 0.1f)];
        var adapter = new QLoRA.Core.Peft.LoraAdapter(QLoRA.Core.Peft.LoraConfig.Parse("""{"r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]}"""),
            [new QLoRA.Core.Peft.LoraModuleWeights("model.layers.0.self_attn.q_proj", TensorData.FromSingle(a, 4, 64), TensorData.FromSingle(b, 64, 4))]);
        adapter.Save(Path.Combine(work, "adapter"));
        (int code, string output, string error) = Qlora("merge", "--model", folder, "--adapter", Path.Combine(work, "adapter"), "--output", Path.Combine(work, "merged"));
        Assert.True(code == 0, error);
        Assert.Contains("1 modules merged", output);
        QLoRA.Core.Peft.LoraMerger.Merge(folder, QLoRA.Core.Peft.LoraAdapter.Load(Path.Combine(work, "adapter")), Path.Combine(work, "library"));
        Assert.Equal(File.ReadAllBytes(Path.Combine(work, "library", "model.safetensors")), File.ReadAllBytes(Path.Combine(work, "merged", "model.safetensors")));
        Assert.Equal(QloraCli.UserError, Qlora("merge", "--model", folder, "--adapter", Path.Combine(work, "adapter"), "--output", Path.Combine(work, "x"), "--dtype", "int8").Code);
        Assert.Equal(QloraCli.UserError, Qlora("merge", "--model", folder, "--adapter", Path.Combine(work, "none"), "--output", Path.Combine(work, "x")).Code);
        Assert.False(Directory.Exists(Path.Combine(work, "x")));
    }

    [Fact]
    public void TrainFineTunesOnJsonlAndWritesTheAdapterAndMetrics()
    {
        (string folder, _) = Checkpoint(QLoRA.Text.Tokenization.ByteTokenizer.VocabSize);
        QLoRA.Text.Tokenization.ByteTokenizer.WriteFiles(folder);
        string work = Directory.CreateTempSubdirectory("qlora-cli-").FullName;
        string data = Path.Combine(work, "data.jsonl");
        File.WriteAllLines(data, Enumerable.Range(0, 8).Select(i => $$"""{"prompt": "Say {{i}}:", "completion": " {{i}}{{i}}{{i}}"}"""));
        string output = Path.Combine(work, "out");
        (int code, string stdout, string error) = Qlora("train", "--model", folder, "--data", data, "--output", output, "--steps", "8", "--grad-accum", "2",
            "--seq-len", "32", "--rank", "4", "--alpha", "8", "--dropout", "0", "--lr", "1e-2", "--optimizer", "adamw");
        Assert.True(code == 0, error + stdout);
        Assert.Contains("step 8/8", stdout);
        var adapter = QLoRA.Core.Peft.LoraAdapter.Load(Path.Combine(output, "adapter"));
        Assert.Equal(4, adapter.Config.R);
        Assert.Equal(14, adapter.Modules.Count);
        double[] losses = [.. File.ReadAllLines(Path.Combine(output, "metrics.jsonl")).Select(l => JsonNode.Parse(l)!).Where(n => n["loss"] is not null).Select(n => n["loss"]!.GetValue<double>())];
        Assert.Equal(8, losses.Length);
        Assert.True(losses[^1] < losses[0], $"the loss must fall: {string.Join(", ", losses)}");
        Assert.Contains("ETA", stdout);
        Assert.DoesNotContain("\u001b[", stdout); // redirected: plain lines, no terminal codes
        byte[] png = File.ReadAllBytes(Path.Combine(output, "loss.png"));
        Assert.Equal([0x89, (byte)'P', (byte)'N', (byte)'G'], png[..4]);
        Assert.True(png.Length > 2000, $"{png.Length} bytes");

        File.AppendAllText(data, "{\"prompt\": 3}\n");
        (code, _, error) = Qlora("train", "--model", folder, "--data", data, "--output", Path.Combine(work, "bad"), "--steps", "1");
        Assert.Equal(QloraCli.UserError, code);
        Assert.Contains("data.jsonl", error);
        Assert.Contains("9", error); // the line
        Assert.Equal(QloraCli.UserError, Qlora("train", "--model", folder, "--data", data, "--optimizer", "sgd").Code);

        // --modules-to-save trains the norms and lm_head whole: the adapter saves them as PEFT does.
        File.WriteAllLines(data, Enumerable.Range(0, 4).Select(i => $$"""{"prompt": "Say {{i}}:", "completion": " {{i}}{{i}}"}"""));
        string saved = Path.Combine(work, "saved");
        (code, stdout, error) = Qlora("train", "--model", folder, "--data", data, "--output", saved, "--steps", "2", "--grad-accum", "1",
            "--seq-len", "32", "--rank", "4", "--optimizer", "adamw", "--modules-to-save", "norm,lm_head");
        Assert.True(code == 0, error + stdout);
        var withSaved = QLoRA.Core.Peft.LoraAdapter.Load(Path.Combine(saved, "adapter"));
        Assert.Equal(["norm", "lm_head"], withSaved.Config.ModulesToSave);
        Assert.Contains("model.norm.weight", withSaved.SavedModules.Keys);
        Assert.Contains("lm_head.weight", withSaved.SavedModules.Keys);
        (code, _, error) = Qlora("train", "--model", folder, "--data", data, "--output", Path.Combine(work, "bad2"), "--steps", "1", "--modules-to-save", "mlp");
        Assert.Equal(QloraCli.UserError, code);
        Assert.Contains("modules_to_save", error);
    }

    [Fact]
    public async Task TrainShowsALiveDisplayInAPseudoTerminal()
    {
        // The real tool under `script`, which gives it a pseudo-terminal: Spectre's live status (terminal codes) and the
        // trail of step lines; the same run redirected (above) prints plain lines only.
        (string folder, _) = Checkpoint(QLoRA.Text.Tokenization.ByteTokenizer.VocabSize);
        QLoRA.Text.Tokenization.ByteTokenizer.WriteFiles(folder);
        string work = Directory.CreateTempSubdirectory("qlora-cli-").FullName;
        string data = Path.Combine(work, "data.jsonl");
        File.WriteAllLines(data, Enumerable.Range(0, 4).Select(i => $$"""{"prompt": "Say {{i}}:", "completion": " {{i}}"}"""));
        string tool = Path.Combine(AppContext.BaseDirectory, "qlora.dll");
        string dotnet = Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") is { Length: > 0 } host ? host : "dotnet";
        string command = $"'{dotnet}' '{tool}' train --model '{folder}' --data '{data}' --output '{Path.Combine(work, "out")}' --steps 4 --grad-accum 1 --seq-len 32 --rank 2";
        var start = new System.Diagnostics.ProcessStartInfo("script") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (string arg in new[] { "-q", "-e", "-c", command, "/dev/null" })
        {
            start.ArgumentList.Add(arg);
        }

        start.Environment["TERM"] = "xterm-256color";
        start.Environment["QLORA_DEVICE"] = "cpu";
        using var process = System.Diagnostics.Process.Start(start)!;
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(TestContext.Current.CancellationToken);
        timeout.CancelAfter(TimeSpan.FromMinutes(2));
        string output = await process.StandardOutput.ReadToEndAsync(timeout.Token);
        await process.WaitForExitAsync(timeout.Token);
        Assert.True(process.ExitCode == 0, output);
        Assert.Contains("\u001b[", output);   // the live display drew on the terminal
        Assert.Contains("step 4/4", output);
        Assert.Contains("ETA", output);
    }

    [Fact]
    public void TokenizeGivesIdsOfTextAndOfARenderedConversation()
    {
        string folder = Directory.CreateTempSubdirectory("qlora-cli-").FullName;
        QLoRA.Text.Tokenization.ByteTokenizer.WriteFiles(folder);
        Assert.Equal("104 105", Qlora("tokenize", "--model", folder, "--text", "hi").Out.Trim());
        string chat = Path.Combine(folder, "chat.json");
        File.WriteAllText(chat, """{"messages": [{"role": "user", "content": "hi"}]}""");
        (int code, string output, string error) = Qlora("tokenize", "--model", folder, "--chat-json", chat, "--add-generation-prompt", "--json");
        Assert.True(code == 0, error);
        JsonNode json = JsonNode.Parse(output)!;
        Assert.Equal("<s><|user|>hi<|end|><|assistant|>", json["text"]!.GetValue<string>());
        Assert.Equal([256, 259, 104, 105, 257, 260], json["ids"]!.AsArray().Select(n => n!.GetValue<int>())); // one BOS: the template's
        File.WriteAllText(chat, """{"turns": []}""");
        Assert.Equal(QloraCli.UserError, Qlora("tokenize", "--model", folder, "--chat-json", chat).Code);
        Assert.Equal(QloraCli.UserError, Qlora("tokenize", "--model", folder).Code);
    }

    [Fact]
    public void DemoQuantizesTrainsAndTheTrainedModelAnswersAsTaught()
    {
        string output = Directory.CreateTempSubdirectory("qlora-demo-").FullName;
        (int code, string stdout, string error) = Qlora("demo", "--check", "--output", output);
        Assert.True(code == 0, error + stdout);
        Assert.Contains("quantized to NF4 + double quantization", stdout);
        Assert.Contains("4/4 answers as taught", stdout);
        Assert.True(File.Exists(Path.Combine(output, "run", "adapter", "adapter_model.safetensors")));
        // Too few steps to learn: --check reports it with exit code 1.
        Assert.Equal(1, Qlora("demo", "--check", "--steps", "1", "--output", output).Code);

        // On a checkpoint of the user's (here a random one written elsewhere): quantized on the way, its own tokenizer.
        string mine = Path.Combine(output, "mine");
        QLoRA.Runtime.Models.RandomLlama.Write(mine, new(Hidden: 64, Intermediate: 96, Layers: 2, Seed: 5));
        (code, stdout, error) = Qlora("demo", "--model", mine, "--steps", "2", "--output", Path.Combine(output, "second"));
        Assert.True(code == 0, error + stdout);
        Assert.Contains(mine, stdout);
        Assert.Equal(QloraCli.UserError, Qlora("demo", "--model", Path.Combine(output, "missing"), "--steps", "1").Code);
    }

    [Fact]
    public void GenerateStreamsTextAndPrintsIdsAsTheLibraryGeneratesThem()
    {
        (string folder, _) = Checkpoint(vocab: QLoRA.Text.Tokenization.ByteTokenizer.VocabSize);
        QLoRA.Text.Tokenization.ByteTokenizer.WriteFiles(folder);
        int[] prompt = [256, 259, 104, 105, 257, 260]; // "hi" as a user turn with the generation prompt

        // The library's greedy continuation of the same NF4 model.
        int[] expected;
        using (var device = QLoRA.Runtime.Devices.Device.Best())
        using (var model = QLoRA.Runtime.Models.LlamaForCausalLM.Load(device, folder))
        using (var engine = new QLoRA.Runtime.Generation.GenerationEngine(model.ToEngineModel(), new() { MaxBatch = 1, MaxSequenceLength = 64 }))
        {
            expected = [.. engine.Generate(new QLoRA.Runtime.Generation.GenerationRequest(prompt) { MaxTokens = 12, StopTokenIds = [QLoRA.Text.Tokenization.ByteTokenizer.EndOfTurn] }, TestContext.Current.CancellationToken).Ids];
        }

        (int code, string output, string error) = Qlora("generate", "--model", folder, "--tokens", string.Join(',', prompt), "--max-tokens", "12", "--json");
        Assert.True(code == 0, error);
        JsonNode json = JsonNode.Parse(output)!;
        Assert.Equal(prompt, json["prompt_ids"]!.AsArray().Select(n => n!.GetValue<int>()));
        Assert.Equal(expected, json["ids"]!.AsArray().Select(n => n!.GetValue<int>()));
        string text = json["text"]!.GetValue<string>();

        // Streamed text of the same prompt given as text through the chat template: the same continuation.
        (code, output, error) = Qlora("generate", "--model", folder, "--prompt", "hi", "--chat", "--max-tokens", "12");
        Assert.True(code == 0, error);
        Assert.Equal(text, output.TrimEnd('\n', '\r'));

        // Sampled with a seed: repeatable.
        string[] sampled = ["generate", "--model", folder, "--prompt", "hi", "--temperature", "1.5", "--top-k", "50", "--seed", "3", "--max-tokens", "8", "--json"];
        Assert.Equal(Qlora(sampled).Out, Qlora(sampled).Out);

        // Bad input: one message, exit 1; usage errors exit 2.
        Assert.Equal(QloraCli.UserError, Qlora("generate", "--model", folder, "--prompt", "hi", "--tokens", "1").Code);
        Assert.Equal(QloraCli.UserError, Qlora("generate", "--model", folder, "--tokens", "1,x").Code);
        (code, _, error) = Qlora("generate", "--model", folder, "--tokens", "1,9999");
        Assert.Equal(QloraCli.UserError, code);
        Assert.Contains("outside the vocabulary", error);
        Assert.DoesNotContain("   at ", error);
        Assert.Equal(QloraCli.UserError, Qlora("generate", "--model", folder, "--tokens", "1", "--top-p", "0").Code);
        Assert.Equal(QloraCli.UsageError, Qlora("generate", "--tokens", "1").Code);
        (code, _, error) = Qlora("generate", "--model", Path.Combine(folder, "missing"), "--tokens", "1");
        Assert.Equal(QloraCli.UserError, code);
        Assert.Contains("missing", error);
        (string bare, _) = Checkpoint();
        Assert.Equal(QloraCli.UserError, Qlora("generate", "--model", bare, "--prompt", "hi").Code); // no tokenizer.json
        Assert.Equal(0, Qlora("generate", "--model", bare, "--tokens", "1,2", "--max-tokens", "3").Code);
    }

    [Fact]
    public void ChatKeepsTheConversationResetsAndExits()
    {
        (string folder, _) = Checkpoint(vocab: QLoRA.Text.Tokenization.ByteTokenizer.VocabSize);
        QLoRA.Text.Tokenization.ByteTokenizer.WriteFiles(folder);
        (int code, string output, string error) = QloraWithInput("hi\n/reset\nhello\n/exit\nnot read\n", "chat", "--model", folder, "--max-tokens", "4", "--temperature", "0");
        Assert.True(code == 0, error);
        Assert.Contains("(conversation reset)", output);
        Assert.Equal(5, output.Split("> ").Length); // four prompts: hi, /reset, hello, /exit (the rest is not read)
        (string bare, _) = Checkpoint();
        Assert.Equal(QloraCli.UserError, QloraWithInput("hi\n", "chat", "--model", bare).Code); // no tokenizer, no template
        Assert.Equal(QloraCli.UserError, QloraWithInput("hi\n", "chat", "--model", Path.Combine(bare, "missing")).Code);
        Assert.Equal(QloraCli.UsageError, QloraWithInput("hi\n", "chat").Code);
    }

    [Fact]
    public void BenchPrintsItsTableOrOneJsonRecord()
    {
        (int code, string output, string error) = Qlora("bench", "--hidden", "64", "--layers", "1");
        Assert.True(code == 0, error);
        foreach (string row in new[] { "| copy (reference) |", "| NF4 + DQ quantize |", "| decode, batch 1 |", "| decode, batch 4 |", "| LoRA training step |" })
        {
            Assert.Contains(row, output);
        }

        (code, output, error) = Qlora("bench", "--hidden", "64", "--layers", "1", "--json");
        Assert.True(code == 0, error);
        JsonNode record = JsonNode.Parse(output)!;
        Assert.True(record["decode, batch 1"]!["value"]!.GetValue<double>() > 0);
        Assert.Equal(QloraCli.UserError, Qlora("bench", "--hidden", "100").Code);
    }

    [Theory]
    [InlineData("bench")]
    [InlineData("generate")]
    [InlineData("chat")]
    [InlineData("demo")]
    [InlineData("tokenize")]
    [InlineData("train")]
    [InlineData("merge")]
    [InlineData("score")]
    [InlineData("root")]
    [InlineData("inspect")]
    [InlineData("quantize")]
    [InlineData("dequantize")]
    public void HelpMatchesItsSnapshot(string command)
    {
        (int code, string output, _) = Qlora(command == "root" ? ["--help"] : [command, "--help"]);
        Assert.Equal(0, code);
        string text = output.ReplaceLineEndings("\n");
        string golden = Path.Combine(AppContext.BaseDirectory, "Golden", $"help-{command}.txt");
        if (Environment.GetEnvironmentVariable("QLORA_UPDATE_GOLDEN") == "1")
        {
            File.WriteAllText(Path.GetFullPath(Path.Combine(AppContext.BaseDirectory, "../../../Golden", $"help-{command}.txt")), text);
            return;
        }

        Assert.True(File.Exists(golden), $"missing {golden} (run with QLORA_UPDATE_GOLDEN=1)");
        Assert.Equal(File.ReadAllText(golden).ReplaceLineEndings("\n"), text);
    }
}
