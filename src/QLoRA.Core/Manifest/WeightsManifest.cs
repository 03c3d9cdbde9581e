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
        JsonObject root = StrictJson.ParseObject(File.ReadAllBytes(full), (problem, inner) => new CheckpointFormatException(full, null, $"the manifest {problem}", inner));
        if (StrictJson.OptInt(root, "version", p => new CheckpointFormatException(full, "version", p)) != CurrentVersion)
        {
            throw new CheckpointFormatException(full, "version", $"manifest version {root["version"]?.ToJsonString() ?? "(missing)"} is not {CurrentVersion}");
        }

        CheckpointFormatException Bad(string? item, string problem) => new(full, item, problem);
        string model = Str(root["model"]) ?? throw Bad("model", "missing or not a string");
        var tensors = new Dictionary<string, ManifestTensor>(StringComparer.Ordinal);
        if (root["tensors"] is not JsonObject entries)
        {
            throw Bad("tensors", "missing or not an object");
        }

        foreach ((string name, JsonNode? node) in entries)
        {
            if (node is not JsonObject e || e["shape"] is not JsonArray shapeArray || Str(e["stored"]) is not string stored)
            {
                throw Bad(name, "malformed manifest entry (needs shape and stored)");
            }

            var shape = new List<long>(shapeArray.Count);
            foreach (JsonNode? d in shapeArray)
            {
                if (d is not JsonValue v || v.GetValueKind() != JsonValueKind.Number || !v.TryGetValue(out long dim) || dim < 0)
                {
                    throw Bad(name, $"shape entry {d?.ToJsonString() ?? "null"} is not a non-negative integer");
                }

                shape.Add(dim);
            }

            int? blockSize = StrictJson.OptInt(e, "blocksize", p => Bad(name, $"blocksize {p}"));
            bool? doubleQuant = e["double_quant"] switch
            {
                null => null,
                JsonValue v when v.GetValueKind() is JsonValueKind.True or JsonValueKind.False => v.GetValue<bool>(),
                var other => throw Bad(name, $"double_quant must be true or false, not {other.ToJsonString()}"),
            };
            tensors[name] = new ManifestTensor(shape, stored, blockSize, doubleQuant, OptStr(e, "source_xxh3", name) ?? "")
            {
                SourceSha256 = OptStr(e, "source_sha256", name),
            };
        }

        var tied = new List<string>();
        if (root["tied"] is JsonNode tiedNode)
        {
            if (tiedNode is not JsonArray t)
            {
                throw Bad("tied", "must be a list of tensor names");
            }

            foreach (JsonNode? n in t)
            {
                tied.Add(Str(n) ?? throw Bad("tied", $"entry {n?.ToJsonString() ?? "null"} is not a string"));
            }
        }

        if (root["config"] is JsonNode c && c is not JsonObject)
        {
            throw Bad("config", "must be an object");
        }

        string? OptStr(JsonObject e, string field, string item) => e[field] switch
        {
            null => null,
            var v => Str(v) ?? throw Bad(item, $"{field} must be a string, not {v.ToJsonString()}"),
        };

        return new WeightsManifest(model, root["config"] as JsonObject ?? [], tied, tensors);
    }

    private static string? Str(JsonNode? node) =>
        node is JsonValue v && v.GetValueKind() == JsonValueKind.String ? v.GetValue<string>() : null;
}
