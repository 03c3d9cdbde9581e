using System.Text.Json;
using System.Text.Json.Nodes;

namespace QLoRA.Core.Manifest;

/// <summary>One tensor of a weights manifest.</summary>
/// <param name="Shape">Logical (unpacked) HF shape.</param>
/// <param name="Stored">nf4, fp4, bf16, f16 or f32.</param>
/// <param name="BlockSize">Values per absmax block, for 4-bit storage.</param>
/// <param name="DoubleQuant">Whether the absmax is double-quantized, for 4-bit storage.</param>
/// <param name="SourceXxh3">Lowercase hex XXH3-128 of the source tensor's bytes (empty in manifests from before it).</param>
public sealed record ManifestTensor(IReadOnlyList<long> Shape, string Stored, int? BlockSize, bool? DoubleQuant, string SourceXxh3)
{
    /// <summary>The SHA-256 that manifests written before <c>source_xxh3</c> carry, when present.</summary>
    public string? SourceSha256 { get; init; }
}

/// <summary>
/// <c>&lt;OutputName&gt;.qlora.json</c>: what the build quantized, for the source generator's compile-time checks and the
/// runtime (DESIGN.md §3 "Weights manifest").
/// </summary>
public sealed class WeightsManifest
{
    /// <summary>Schema version written and understood.</summary>
    public const int CurrentVersion = 1;

    /// <summary>Creates a manifest.</summary>
    public WeightsManifest(string model, JsonObject config, IReadOnlyList<string> tied, IReadOnlyDictionary<string, ManifestTensor> tensors)
    {
        Model = model;
        Config = config;
        Tied = tied;
        Tensors = tensors;
    }

    /// <summary>The OutputName of the weights.</summary>
    public string Model { get; }

    /// <summary>The config.json fields the runtime reads.</summary>
    public JsonObject Config { get; }

    /// <summary>Tensors that are tied to another (e.g. lm_head.weight with tie_word_embeddings).</summary>
    public IReadOnlyList<string> Tied { get; }

    /// <summary>Tensors by HF name.</summary>
    public IReadOnlyDictionary<string, ManifestTensor> Tensors { get; }

    /// <summary>The manifest as indented JSON, tensors sorted by name.</summary>
    public string ToJson()
    {
        var tensors = new JsonObject();
        foreach ((string name, ManifestTensor t) in Tensors.OrderBy(e => e.Key, StringComparer.Ordinal))
        {
            var entry = new JsonObject
            {
                ["shape"] = new JsonArray([.. t.Shape.Select(d => (JsonNode?)d)]),
                ["stored"] = t.Stored,
            };
            if (t.BlockSize is int bs)
            {
                entry["blocksize"] = bs;
            }

            if (t.DoubleQuant is bool dq)
            {
                entry["double_quant"] = dq;
            }

            entry["source_xxh3"] = t.SourceXxh3;
            tensors[name] = entry;
        }

        var root = new JsonObject
        {
            ["version"] = CurrentVersion,
            ["model"] = Model,
            ["config"] = Config.DeepClone(),
            ["tied"] = new JsonArray([.. Tied.Select(s => (JsonNode?)s)]),
            ["tensors"] = tensors,
        };
        return root.ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n";
    }

    /// <summary>Reads and validates a manifest.</summary>
    /// <exception cref="CheckpointFormatException">Not a version-1 manifest, or a malformed entry (named).</exception>
    public static WeightsManifest Read(string path)
    {
        string full = Path.GetFullPath(path);
        JsonObject root;
        try
        {
            root = JsonNode.Parse(File.ReadAllText(full)) as JsonObject ?? throw new CheckpointFormatException(full, null, "a manifest must be a JSON object");
        }
        catch (JsonException e)
        {
            throw new CheckpointFormatException(full, null, $"not valid JSON ({e.Message})", e);
        }

        if (root["version"]?.GetValue<int>() != CurrentVersion)
        {
            throw new CheckpointFormatException(full, "version", $"manifest version {root["version"]?.ToJsonString() ?? "(missing)"} is not {CurrentVersion}");
        }

        string model = root["model"]?.GetValue<string>() ?? throw new CheckpointFormatException(full, "model", "missing");
        var tensors = new Dictionary<string, ManifestTensor>(StringComparer.Ordinal);
        if (root["tensors"] is not JsonObject entries)
        {
            throw new CheckpointFormatException(full, "tensors", "missing or not an object");
        }

        foreach ((string name, JsonNode? node) in entries)
        {
            try
            {
                JsonObject e = node!.AsObject();
                tensors[name] = new ManifestTensor(
                    [.. e["shape"]!.AsArray().Select(d => d!.GetValue<long>())],
                    e["stored"]!.GetValue<string>(),
                    e["blocksize"]?.GetValue<int>(),
                    e["double_quant"]?.GetValue<bool>(),
                    e["source_xxh3"]?.GetValue<string>() ?? "")
                {
                    SourceSha256 = e["source_sha256"]?.GetValue<string>(),
                };
            }
            catch (Exception ex) when (ex is InvalidOperationException or NullReferenceException or FormatException)
            {
                throw new CheckpointFormatException(full, name, "malformed manifest entry (needs shape and stored)", ex);
            }
        }

        var tied = root["tied"] is JsonArray t ? t.Select(n => n!.GetValue<string>()).ToList() : [];
        return new WeightsManifest(model, root["config"] as JsonObject ?? [], tied, tensors);
    }
}
