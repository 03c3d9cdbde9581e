using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using QLoRA.Core.Peft;
using QLoRA.Core.Quantization;
using QLoRA.Modeling;
using QLoRA.Runtime.Devices;
using QLoRA.Runtime.Generation;
using QLoRA.Runtime.Layers;
using QLoRA.Runtime.Models;
using QLoRA.Text.Tokenization;

namespace QLoRA.Cli;

/// <summary>
/// <c>qlora score --model M [--adapter A] (--text T | --tokens 1,2,3 | --file F) [--quantize nf4|fp4|none]
/// [--logits-json FILE]</c>: each token's log-probability under the model, the mean negative log-likelihood and the
/// perplexity; <c>--logits-json</c> writes <c>{"input_ids": [...], "logits": [[...], ...]}</c> (float32, one row per
/// position) for parity checks.
/// </summary>
internal static class ScoreCommand
{
    public static Command Create(CommandContext context)
    {
        var model = new Option<string>("--model") { Description = "A Hugging Face model folder, or an id (org/name[@revision]) in the local Hugging Face cache", Required = true };
        var adapter = new Option<string?>("--adapter") { Description = "A PEFT LoRA adapter folder to apply" };
        var text = new Option<string?>("--text") { Description = "Text to score (tokenized with the model's tokenizer)" };
        var tokens = new Option<string?>("--tokens") { Description = "Token ids to score, comma-separated" };
        var file = new Option<string?>("--file") { Description = "A text file to score" };
        var quantize = new Option<string>("--quantize") { Description = "How dense projections load: nf4, fp4 or none (kept dense)", DefaultValueFactory = _ => "nf4" };
        var logitsJson = new Option<string?>("--logits-json") { Description = "Write the logits to this JSON file" };
        var command = new Command("score", "Log-probabilities and perplexity of a text under a model") { model, adapter, text, tokens, file, quantize, logitsJson };
        command.SetAction(parsed => Run(context, parsed.GetValue(model)!, parsed.GetValue(adapter), parsed.GetValue(text), parsed.GetValue(tokens), parsed.GetValue(file),
            parsed.GetValue(quantize)!, parsed.GetValue(logitsJson)));
        return command;
    }

    private static int Run(CommandContext context, string modelPath, string? adapterPath, string? text, string? tokenList, string? file, string quantize, string? logitsPath)
    {
        if (new[] { text, tokenList, file }.Count(s => s is not null) != 1)
        {
            throw new CliException("give exactly one of --text, --tokens and --file");
        }

        modelPath = QLoRA.Core.HuggingFace.HubCache.ResolveOrDownload(modelPath); // a folder, or a hub id in the local cache

        LoadOptions options = ServingModel.ParseQuantize(quantize);
        int[] ids = tokenList is not null ? ParseTokens(tokenList) : HfTokenizer.FromFolder(modelPath).Encode(text ?? File.ReadAllText(file!));
        if (ids.Length < 2)
        {
            throw new CliException("scoring needs at least two tokens (each is scored given the ones before it)");
        }

        using Device device = Device.Best();
        using LlamaForCausalLM model = LlamaForCausalLM.Load(device, modelPath, options);
        if (ids.Any(id => (uint)id >= (uint)model.Config.VocabSize))
        {
            throw new CliException($"token id {ids.First(id => (uint)id >= (uint)model.Config.VocabSize)} is outside the vocabulary of {model.Config.VocabSize}");
        }

        if (adapterPath is not null)
        {
            LoraAttachment.AttachSaved(device, model.EnumerateLayers(), LoraAdapter.Load(adapterPath));
        }

        ScoreResult score = Scorer.Score(model.ToEngineModel(), ids);
        float[] logits = score.Logits;
        int vocab = model.Config.VocabSize;
        double[] logProbs = score.LogProbs;
        double nll = score.MeanNll;
        TextWriter w = context.Output;
        w.WriteLine("| position | token | log p |");
        w.WriteLine("| ---: | ---: | ---: |");
        for (int t = 0; t < logProbs.Length; t++)
        {
            w.WriteLine(string.Create(CultureInfo.InvariantCulture, $"| {t + 1} | {ids[t + 1]} | {logProbs[t]:F4} |"));
        }

        w.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{logProbs.Length} tokens scored: mean NLL {nll:F4}, perplexity {Math.Exp(nll):F3} ({device.Description})"));
        if (logitsPath is not null)
        {
            var rows = new JsonArray();
            for (int t = 0; t < ids.Length; t++)
            {
                rows.Add(new JsonArray([.. logits.AsSpan(t * vocab, vocab).ToArray().Select(v => (JsonNode?)v)]));
            }

            var json = new JsonObject { ["input_ids"] = new JsonArray([.. ids.Select(i => (JsonNode?)i)]), ["logits"] = rows };
            QLoRA.Core.AtomicFile.WriteAllText(logitsPath, json.ToJsonString(new JsonSerializerOptions { WriteIndented = false }));
        }

        return 0;
    }

    private static int[] ParseTokens(string list)
    {
        try
        {
            return [.. list.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Select(t => int.Parse(t, NumberStyles.Integer, CultureInfo.InvariantCulture))];
        }
        catch (FormatException)
        {
            throw new CliException($"--tokens '{list}' is not a comma-separated list of token ids");
        }
        catch (OverflowException)
        {
            throw new CliException($"--tokens '{list}' has an id out of range");
        }
    }
}
