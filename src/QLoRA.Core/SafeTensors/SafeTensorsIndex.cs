using System.Text.Json;
using System.Text.Json.Nodes;

namespace QLoRA.Core.SafeTensors;

/// <summary>
/// <c>model.safetensors.index.json</c> of a sharded checkpoint: <c>{"metadata": {"total_size": N}, "weight_map": {tensor: shard file}}</c>.
/// </summary>
public sealed class SafeTensorsIndex
{
    /// <summary>The conventional index file name.</summary>
    public const string FileName = "model.safetensors.index.json";

    /// <summary>Creates an index.</summary>
    public SafeTensorsIndex(IReadOnlyDictionary<string, string> weightMap, long? totalSize = null)
    {
        WeightMap = weightMap;
        TotalSize = totalSize;
    }

    /// <summary>Tensor name → shard file name (relative to the index's folder).</summary>
    public IReadOnlyDictionary<string, string> WeightMap { get; }

    /// <summary><c>metadata.total_size</c>, if present.</summary>
    public long? TotalSize { get; }

    /// <summary>Reads and validates an index file.</summary>
    /// <exception cref="SafeTensorsFormatException">Not valid JSON, no weight_map object, non-string entries, or shard paths leaving the folder.</exception>
    public static SafeTensorsIndex Read(string path)
    {
        string full = Path.GetFullPath(path);
        JsonNode root = StrictJson.ParseObject(File.ReadAllBytes(full), (problem, inner) => new SafeTensorsFormatException(full, null, $"the index {problem}", inner));

        if (root is not JsonObject obj || obj["weight_map"] is not JsonObject map)
        {
            throw new SafeTensorsFormatException(full, "weight_map", "the index must be an object with a 'weight_map' object");
        }

        var weightMap = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (KeyValuePair<string, JsonNode?> entry in map)
        {
            if (entry.Value is not JsonValue value || !value.TryGetValue(out string? shard) || string.IsNullOrEmpty(shard))
            {
                throw new SafeTensorsFormatException(full, entry.Key, "weight_map values must be shard file names");
            }

            if (Path.IsPathRooted(shard) || shard.Contains("..", StringComparison.Ordinal) || shard.Contains('/') || shard.Contains('\\'))
            {
                throw new SafeTensorsFormatException(full, entry.Key, $"shard '{shard}' must be a file name in the index's folder");
            }

            if (!weightMap.TryAdd(entry.Key, shard))
            {
                throw new SafeTensorsFormatException(full, entry.Key, "listed more than once in weight_map");
            }
        }

        long? total = null;
        if (obj["metadata"] is JsonObject metadata && metadata["total_size"] is JsonValue size)
        {
            if (size.TryGetValue(out long t))
            {
                total = t;
            }
            else if (size.TryGetValue(out double d) && d >= 0 && d == Math.Floor(d))
            {
                total = (long)d;
            }
        }

        return new SafeTensorsIndex(weightMap, total);
    }

    /// <summary>Writes the index atomically (entries sorted by tensor name, as transformers writes them).</summary>
    public void Write(string path)
    {
        var map = new JsonObject();
        foreach (KeyValuePair<string, string> entry in WeightMap.OrderBy(e => e.Key, StringComparer.Ordinal))
        {
            map[entry.Key] = entry.Value;
        }

        var root = new JsonObject
        {
            ["metadata"] = TotalSize is long t ? new JsonObject { ["total_size"] = t } : new JsonObject(),
            ["weight_map"] = map,
        };
        AtomicFile.WriteAllText(path, root.ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n");
    }
}
