using System.Text.Json;

namespace QLoRA.Text;

/// <summary>
/// generation_config.json: the stop ids (<c>eos_token_id</c> is an int or a list — Llama 3 Instruct has three), BOS
/// and pad ids, and the checkpoint's default sampling parameters. Absent values are null (or empty).
/// </summary>
public sealed class GenerationConfig
{
    /// <summary>The file it was read from, or null when the folder has none.</summary>
    public string? SourcePath { get; init; }

    /// <summary><c>eos_token_id</c> as a list (empty when absent).</summary>
    public IReadOnlyList<int> EosTokenIds { get; init; } = [];

    /// <summary><c>bos_token_id</c>.</summary>
    public int? BosTokenId { get; init; }

    /// <summary><c>pad_token_id</c>.</summary>
    public int? PadTokenId { get; init; }

    /// <summary><c>do_sample</c>.</summary>
    public bool? DoSample { get; init; }

    /// <summary><c>temperature</c>.</summary>
    public double? Temperature { get; init; }

    /// <summary><c>top_p</c>.</summary>
    public double? TopP { get; init; }

    /// <summary><c>top_k</c>.</summary>
    public int? TopK { get; init; }

    /// <summary><c>min_p</c>.</summary>
    public double? MinP { get; init; }

    /// <summary><c>repetition_penalty</c>.</summary>
    public double? RepetitionPenalty { get; init; }

    /// <summary><c>max_new_tokens</c>.</summary>
    public int? MaxNewTokens { get; init; }

    /// <summary><c>max_length</c> (prompt + generated).</summary>
    public int? MaxLength { get; init; }

    /// <summary>Reads <paramref name="folder"/>/generation_config.json; an empty config when the file is absent.</summary>
    /// <exception cref="TextFormatException">The file is malformed; names the file and field.</exception>
    public static GenerationConfig Load(string folder)
    {
        string path = Path.Combine(folder, "generation_config.json");
        if (!File.Exists(path)) return new GenerationConfig();
        using var doc = JsonFile.Parse(path);
        return Parse(doc.RootElement, path);
    }

    /// <summary>Reads a generation_config.json object.</summary>
    public static GenerationConfig Parse(JsonElement root, string path)
    {
        if (root.ValueKind != JsonValueKind.Object) throw new TextFormatException(path, null, "must be a JSON object");
        var eos = new List<int>();
        if (root.OptElement("eos_token_id") is { } e)
        {
            if (e.ValueKind == JsonValueKind.Number) eos.Add(TokenId(e, path, "eos_token_id"));
            else if (e.ValueKind == JsonValueKind.Array)
            {
                int i = 0;
                foreach (var x in e.EnumerateArray()) eos.Add(TokenId(x, path, $"eos_token_id[{i++}]"));
            }
            else throw new TextFormatException(path, "eos_token_id", $"must be an integer or a list of integers, not {e.ValueKind}");
        }
        int? OptId(string name) => root.OptElement(name) is { } v ? TokenId(v, path, name) : null;
        return new GenerationConfig
        {
            SourcePath = path,
            EosTokenIds = eos,
            BosTokenId = OptId("bos_token_id"),
            PadTokenId = OptId("pad_token_id"),
            DoSample = root.OptElement("do_sample") is not null ? root.OptBool("do_sample", false, path, "") : null,
            Temperature = NonNegative(root.OptDouble("temperature", path, ""), path, "temperature"),
            TopP = Probability(root.OptDouble("top_p", path, ""), path, "top_p"),
            TopK = NonNegativeInt(root.OptInt("top_k", path, ""), path, "top_k"),
            MinP = Probability(root.OptDouble("min_p", path, ""), path, "min_p"),
            RepetitionPenalty = NonNegative(root.OptDouble("repetition_penalty", path, ""), path, "repetition_penalty"),
            MaxNewTokens = NonNegativeInt(root.OptInt("max_new_tokens", path, ""), path, "max_new_tokens"),
            MaxLength = NonNegativeInt(root.OptInt("max_length", path, ""), path, "max_length"),
        };
    }

    private static int TokenId(JsonElement e, string path, string where) =>
        e.ValueKind == JsonValueKind.Number && e.TryGetInt32(out int id) && id >= 0 ? id
            : throw new TextFormatException(path, where, $"must be a non-negative integer token id, not {e.GetRawText()}");

    private static double? NonNegative(double? v, string path, string name) =>
        v is < 0 || v is double d && !double.IsFinite(d) ? throw new TextFormatException(path, name, $"must be a finite non-negative number, not {v}") : v;

    private static double? Probability(double? v, string path, string name) =>
        v is < 0 or > 1 || v is double d && double.IsNaN(d) ? throw new TextFormatException(path, name, $"must be in [0, 1], not {v}") : v;

    private static int? NonNegativeInt(int? v, string path, string name) =>
        v is < 0 ? throw new TextFormatException(path, name, $"must be non-negative, not {v}") : v;
}
