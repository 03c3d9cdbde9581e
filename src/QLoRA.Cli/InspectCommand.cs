using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using QLoRA.Core;
using QLoRA.Core.BitsAndBytes;
using QLoRA.Core.HuggingFace;
using QLoRA.Core.Quantization;
using QLoRA.Core.SafeTensors;

namespace QLoRA.Cli;

/// <summary>
/// <c>qlora inspect PATH [--json]</c>: the tensors of a safetensors file, folder or sharded index (name, dtype, logical
/// shape, bytes; 4-bit ones with their quantization), a footprint table (bf16 vs NF4 vs NF4 + double quantization of
/// the 2-D linear weights, the rest dense) and the config.json beside it.
/// </summary>
internal static class InspectCommand
{
    public static Command Create(CommandContext context)
    {
        var path = new Argument<string>("path") { Description = "A .safetensors file, a model folder or a model.safetensors.index.json" };
        var json = new Option<bool>("--json") { Description = "Machine-readable output (one JSON object)" };
        var command = new Command("inspect", "List a checkpoint's tensors, their 4-bit quantization and its footprint") { path, json };
        command.SetAction(parsed => Run(context, parsed.GetValue(path)!, parsed.GetValue(json)));
        return command;
    }

    private sealed record Row(string Name, DType Dtype, IReadOnlyList<long> Shape, long Bytes, QuantState? Quant);

    private static int Run(CommandContext context, string path, bool asJson)
    {
        if (!File.Exists(path) && !Directory.Exists(path))
        {
            throw new FileNotFoundException($"{path}: no such file or folder", path);
        }

        using SafeTensorsCheckpoint checkpoint = SafeTensorsCheckpoint.Open(path);
        var rows = new List<Row>();
        var groups = checkpoint.TensorNames.Where(n => !BnbFourBitTensor.IsAuxiliaryName(n)).ToList();
        var auxiliaryBytes = checkpoint.TensorNames.Where(BnbFourBitTensor.IsAuxiliaryName).ToDictionary(n => n, n => checkpoint.GetInfo(n).ByteLength);
        foreach (string name in groups)
        {
            SafeTensorsFile file = checkpoint.FileOf(name);
            SafeTensorInfo info = file.GetInfo(name);
            if (BnbFourBitTensor.IsQuantized(file, name))
            {
                QuantState state = BnbFourBitTensor.Read(file, name).State;
                long bytes = info.ByteLength + auxiliaryBytes.Where(a => a.Key.StartsWith(name[..^".weight".Length] + ".weight.", StringComparison.Ordinal)).Sum(a => a.Value);
                rows.Add(new Row(name, state.Dtype, state.Shape, bytes, state));
            }
            else
            {
                rows.Add(new Row(name, info.Dtype, info.Shape, info.ByteLength, null));
            }
        }

        (long parameters, long bf16, long nf4, long nf4Dq) = Footprint(rows);
        string? configPath = ConfigBeside(path);
        HfModelConfig? config = configPath is null ? null : HfModelConfig.Load(configPath);
        if (asJson)
        {
            var o = new JsonObject
            {
                ["path"] = Path.GetFullPath(path),
                ["files"] = new JsonArray([.. checkpoint.ShardFiles.Select(f => (JsonNode?)f)]),
                ["tensors"] = new JsonArray([.. rows.Select(r => (JsonNode?)new JsonObject
                {
                    ["name"] = r.Name,
                    ["dtype"] = r.Dtype.ToString(),
                    ["shape"] = new JsonArray([.. r.Shape.Select(d => (JsonNode?)d)]),
                    ["bytes"] = r.Bytes,
                    ["quant"] = r.Quant is QuantState q ? new JsonObject { ["type"] = q.Type.ToBnbName(), ["block_size"] = q.BlockSize, ["double_quant"] = q.IsDoubleQuantized } : null,
                })]),
                ["parameters"] = parameters,
                ["footprint_bytes"] = new JsonObject { ["bf16"] = bf16, ["nf4"] = nf4, ["nf4_double_quant"] = nf4Dq, ["as_stored"] = rows.Sum(r => r.Bytes) },
                ["config"] = config is null ? null : ConfigJson(config),
            };
            context.Output.WriteLine(o.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
            return 0;
        }

        TextWriter w = context.Output;
        w.WriteLine($"{Path.GetFullPath(path)}: {rows.Count} tensors in {checkpoint.ShardFiles.Count} file(s), {Count(parameters)} parameters");
        w.WriteLine();
        w.WriteLine("| tensor | dtype | shape | bytes | 4-bit |");
        w.WriteLine("| --- | --- | --- | ---: | --- |");
        foreach (Row r in rows)
        {
            string quant = r.Quant is QuantState q ? $"{q.Type.ToBnbName()}, block {q.BlockSize}{(q.IsDoubleQuantized ? ", double-quantized" : "")}" : "";
            w.WriteLine($"| {r.Name} | {r.Dtype} | [{string.Join(", ", r.Shape)}] | {r.Bytes.ToString("N0", CultureInfo.InvariantCulture)} | {quant} |");
        }

        w.WriteLine();
        w.WriteLine("| footprint | bytes | vs bf16 |");
        w.WriteLine("| --- | ---: | ---: |");
        foreach ((string what, long bytes) in new[] { ("bf16", bf16), ("NF4 (linear weights, absmax f32)", nf4), ("NF4 + double quantization", nf4Dq), ("as stored", rows.Sum(r => r.Bytes)) })
        {
            w.WriteLine($"| {what} | {Size(bytes)} | {100.0 * bytes / Math.Max(1, bf16):F1}% |");
        }

        if (config is not null)
        {
            w.WriteLine();
            w.WriteLine($"config: {config.ModelType}, hidden {config.HiddenSize}, intermediate {config.IntermediateSize}, {config.NumHiddenLayers} layers, " +
                $"{config.NumAttentionHeads} heads ({config.NumKeyValueHeads} kv, head_dim {config.HeadDim}), vocab {config.VocabSize}, rope {config.Rope.Type.ToString().ToLowerInvariant()} θ={config.Rope.Theta}" +
                (config.SlidingWindow is int window ? $", sliding window {window}" : "") + (config.TieWordEmbeddings ? ", tied embeddings" : ""));
        }

        return 0;
    }

    // Linear weights (2-D, not embeddings, not lm_head) are what QLoRA quantizes; everything else stays dense bf16.
    private static (long Parameters, long Bf16, long Nf4, long Nf4Dq) Footprint(List<Row> rows)
    {
        long parameters = 0, bf16 = 0, nf4 = 0, nf4Dq = 0;
        foreach (Row r in rows)
        {
            long n = r.Shape.Aggregate(1L, (a, d) => a * d);
            parameters += n;
            bf16 += 2 * n;
            bool linear = r.Shape.Count == 2 && !r.Name.Contains("embed", StringComparison.Ordinal) && !r.Name.StartsWith("lm_head", StringComparison.Ordinal);
            if (!linear)
            {
                nf4 += 2 * n;
                nf4Dq += 2 * n;
                continue;
            }

            long blocks = (n + 63) / 64;
            nf4 += ((n + 1) / 2) + (4 * blocks);
            nf4Dq += ((n + 1) / 2) + blocks + (4 * ((blocks + 255) / 256)) + (256 * 4);
        }

        return (parameters, bf16, nf4, nf4Dq);
    }

    private static string? ConfigBeside(string path)
    {
        string folder = Directory.Exists(path) ? path : Path.GetDirectoryName(Path.GetFullPath(path))!;
        string config = Path.Combine(folder, "config.json");
        return File.Exists(config) ? config : null;
    }

    private static JsonObject ConfigJson(HfModelConfig c) => new()
    {
        ["model_type"] = c.ModelType, ["hidden_size"] = c.HiddenSize, ["intermediate_size"] = c.IntermediateSize, ["num_hidden_layers"] = c.NumHiddenLayers,
        ["num_attention_heads"] = c.NumAttentionHeads, ["num_key_value_heads"] = c.NumKeyValueHeads, ["head_dim"] = c.HeadDim, ["vocab_size"] = c.VocabSize,
        ["tie_word_embeddings"] = c.TieWordEmbeddings, ["rope_theta"] = c.Rope.Theta,
    };

    internal static string Size(long bytes) => bytes >= 1 << 30 ? $"{bytes / 1073741824.0:F2} GiB" : bytes >= 1 << 20 ? $"{bytes / 1048576.0:F2} MiB" : $"{bytes / 1024.0:F1} KiB";

    private static string Count(long n) => n >= 1_000_000_000 ? $"{n / 1e9:F2} B" : n >= 1_000_000 ? $"{n / 1e6:F2} M" : n.ToString(CultureInfo.InvariantCulture);
}
