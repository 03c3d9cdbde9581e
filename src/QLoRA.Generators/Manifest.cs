using System.Collections.Generic;
using System.Collections.Immutable;
using System.Linq;

namespace QLoRA.Generators;

/// <summary>One tensor of a weights manifest.</summary>
internal sealed record ManifestTensorModel(string Name, EquatableArray<long> Shape, string Stored, int BlockSize);

/// <summary>A parsed <c>&lt;OutputName&gt;.qlora.json</c> (equatable, for caching).</summary>
internal sealed record ManifestModel(string Path, string Model, EquatableArray<ManifestTensorModel> Tensors, EquatableArray<string> Tied, EquatableArray<ConfigField> Config, string? Error)
{
    public static ManifestModel Parse(string path, string text)
    {
        try
        {
            var root = (Dictionary<string, object?>)MiniJson.Parse(text)!;
            string model = root.TryGetValue("model", out object? m) && m is string name ? name : System.IO.Path.GetFileName(path).Replace(".qlora.json", "");
            var tensors = new List<ManifestTensorModel>();
            if (root.TryGetValue("tensors", out object? t) && t is Dictionary<string, object?> entries)
            {
                foreach (KeyValuePair<string, object?> entry in entries.OrderBy(e => e.Key, System.StringComparer.Ordinal))
                {
                    var e = (Dictionary<string, object?>)entry.Value!;
                    long[] shape = ((List<object?>)e["shape"]!).Select(d => (long)(double)d!).ToArray();
                    string stored = e.TryGetValue("stored", out object? s) && s is string st ? st : "";
                    int blockSize = e.TryGetValue("blocksize", out object? b) && b is double bs ? (int)bs : 0;
                    tensors.Add(new ManifestTensorModel(entry.Key, new EquatableArray<long>(shape.ToImmutableArray()), stored, blockSize));
                }
            }

            var tied = root.TryGetValue("tied", out object? ti) && ti is List<object?> list ? list.OfType<string>().ToImmutableArray() : ImmutableArray<string>.Empty;
            var config = root.TryGetValue("config", out object? c) && c is Dictionary<string, object?> fields
                ? fields.Where(f => f.Value is double).Select(f => new ConfigField(f.Key, (double)f.Value!)).OrderBy(f => f.Name, System.StringComparer.Ordinal).ToImmutableArray()
                : ImmutableArray<ConfigField>.Empty;
            return new ManifestModel(path, model, new(tensors.ToImmutableArray()), new(tied), new(config), null);
        }
        catch (System.Exception e) when (e is not System.OperationCanceledException)
        {
            return new ManifestModel(path, "", default, default, default, e.Message);
        }
    }
}

/// <summary>A numeric config field recorded in the manifest.</summary>
internal sealed record ConfigField(string Name, double Value);
