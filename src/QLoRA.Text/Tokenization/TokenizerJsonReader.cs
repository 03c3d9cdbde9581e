using System.Text;
using System.Text.Json;

namespace QLoRA.Text.Tokenization;

/// <summary>Builds the pipeline components from tokenizer.json, naming the component path in every error.</summary>
internal sealed class TokenizerJsonReader(string path)
{
    private Exception Unsupported(string where, string what) =>
        new UnsupportedTokenizerComponentException(path, where, what);

    private string TypeOf(JsonElement e, string where) =>
        e.ValueKind == JsonValueKind.Object ? e.ReqString("type", path, where)
        : throw new TextFormatException(path, where, $"must be an object, not {e.ValueKind}");

    public Normalizer? ReadNormalizer(JsonElement? element, string where = "normalizer")
    {
        if (element is not { } e) return null;
        string type = TypeOf(e, where);
        return type switch
        {
            "Sequence" => new SequenceNormalizer(ReadList(e, "normalizers", where, (x, w) => ReadNormalizer(x, w)!)),
            "Prepend" => new PrependNormalizer(e.ReqString("prepend", path, where)),
            "Replace" => new ReplaceNormalizer(ReadPattern(e, where), e.ReqString("content", path, where)),
            "Strip" => new StripNormalizer(e.OptBool("strip_left", false, path, where), e.OptBool("strip_right", false, path, where)),
            "Lowercase" => new LowercaseNormalizer(),
            "NFC" => new UnicodeNormalizer(NormalizationForm.FormC, type),
            "NFD" => new UnicodeNormalizer(NormalizationForm.FormD, type),
            "NFKC" => new UnicodeNormalizer(NormalizationForm.FormKC, type),
            "NFKD" => new UnicodeNormalizer(NormalizationForm.FormKD, type),
            _ => throw Unsupported(where, $"normalizer type '{type}' is not supported (supported: Sequence, Prepend, Replace, Strip, Lowercase, NFC, NFD, NFKC, NFKD)"),
        };
    }

    public PreTokenizer? ReadPreTokenizer(JsonElement? element, out bool byteLevel, string where = "pre_tokenizer")
    {
        byteLevel = false;
        if (element is not { } e) return null;
        string type = TypeOf(e, where);
        switch (type)
        {
            case "Sequence":
            {
                var steps = new List<PreTokenizer>();
                int i = 0;
                foreach (var x in ReqArray(e, "pretokenizers", where))
                {
                    string w = $"{where}.pretokenizers[{i++}]";
                    if (byteLevel) throw Unsupported(w, "a pre-tokenizer after ByteLevel is not supported (ByteLevel must come last)");
                    var step = ReadPreTokenizer(x, out bool bl, w)!;
                    byteLevel |= bl;
                    steps.Add(step);
                }
                return new SequencePreTokenizer(steps);
            }
            case "Split":
                return new PatternPreTokenizer(ReadPattern(e, where), ReadBehavior(e, where), e.OptBool("invert", false, path, where));
            case "ByteLevel":
                byteLevel = true;
                return new ByteLevelPreTokenizer(e.OptBool("add_prefix_space", true, path, where),
                    e.OptBool("use_regex", true, path, where) ? new CodePointRegex(ByteLevelPreTokenizer.Gpt2Pattern, path, where) : null);
            case "Metaspace":
                return new MetaspacePreTokenizer(ReadReplacement(e, where), ReadPrependScheme(e, where), e.OptBool("split", true, path, where));
            case "Digits":
                return new DigitsPreTokenizer(e.OptBool("individual_digits", false, path, where));
            case "WhitespaceSplit":
                return new WhitespaceSplitPreTokenizer();
            default:
                throw Unsupported(where, $"pre-tokenizer type '{type}' is not supported (supported: Sequence, Split, ByteLevel, Metaspace, Digits, WhitespaceSplit)");
        }
    }

    public Decoder? ReadDecoder(JsonElement? element, string where = "decoder")
    {
        if (element is not { } e) return null;
        string type = TypeOf(e, where);
        return type switch
        {
            "Sequence" => new SequenceDecoder(ReadList(e, "decoders", where, (x, w) => ReadDecoder(x, w)!)),
            "ByteLevel" => new ByteLevelDecoder(),
            "Metaspace" => new MetaspaceDecoder(ReadReplacement(e, where), ReadPrependScheme(e, where)),
            "Replace" => new ReplaceDecoder(ReadPattern(e, where), e.ReqString("content", path, where)),
            "ByteFallback" => new ByteFallbackDecoder(),
            "Fuse" => new FuseDecoder(),
            "Strip" => new StripDecoder(ReadChar(e, "content", where), e.OptInt("start", path, where) ?? 0, e.OptInt("stop", path, where) ?? 0),
            _ => throw Unsupported(where, $"decoder type '{type}' is not supported (supported: Sequence, ByteLevel, Metaspace, Replace, ByteFallback, Fuse, Strip)"),
        };
    }

    public PostProcessor? ReadPostProcessor(JsonElement? element, Func<string, int?> tokenId, string where = "post_processor")
    {
        if (element is not { } e) return null;
        string type = TypeOf(e, where);
        switch (type)
        {
            case "Sequence":
                return new SequencePostProcessor(ReadList(e, "processors", where, (x, w) => ReadPostProcessor(x, tokenId, w)!));
            case "ByteLevel":
                return new ByteLevelPostProcessor(e.OptBool("trim_offsets", true, path, where), e.OptBool("add_prefix_space", true, path, where));
            case "TemplateProcessing":
                return ReadTemplate(e, where);
            default:
                throw Unsupported(where, $"post-processor type '{type}' is not supported (supported: Sequence, ByteLevel, TemplateProcessing)");
        }
    }

    private TemplatePostProcessor ReadTemplate(JsonElement e, string where)
    {
        var specials = new Dictionary<string, int[]>();
        if (e.OptElement("special_tokens") is { ValueKind: JsonValueKind.Object } st)
        {
            foreach (var p in st.EnumerateObject())
            {
                var ids = ReqArray(p.Value, "ids", $"{where}.special_tokens.{p.Name}")
                    .Select((x, i) => x.ValueKind == JsonValueKind.Number && x.TryGetInt32(out int v) && v >= 0 ? v
                        : throw new TextFormatException(path, $"{where}.special_tokens.{p.Name}.ids[{i}]", "must be a non-negative integer"))
                    .ToArray();
                specials[p.Name] = ids;
            }
        }
        var before = new List<int>();
        var after = new List<int>();
        bool seenSequence = false;
        int k = 0;
        foreach (var item in ReqArray(e, "single", where))
        {
            string w = $"{where}.single[{k++}]";
            if (item.OptElement("SpecialToken") is { } special)
            {
                string name = special.ReqString("id", path, w + ".SpecialToken");
                if (!specials.TryGetValue(name, out var ids))
                    throw new TextFormatException(path, w, $"special token '{name}' is not listed in special_tokens");
                (seenSequence ? after : before).AddRange(ids);
            }
            else if (item.OptElement("Sequence") is { } seq)
            {
                if (seq.ReqString("id", path, w + ".Sequence") != "A")
                    throw new TextFormatException(path, w, "the single-sequence template must use sequence A");
                if (seenSequence) throw new TextFormatException(path, w, "sequence A appears twice");
                seenSequence = true;
            }
            else
            {
                throw new TextFormatException(path, w, "must be a SpecialToken or a Sequence");
            }
        }
        if (!seenSequence) throw new TextFormatException(path, $"{where}.single", "has no Sequence A");
        return new TemplatePostProcessor(before, after);
    }

    public SplitPattern ReadPattern(JsonElement e, string where)
    {
        if (e.OptElement("pattern") is not { ValueKind: JsonValueKind.Object } p)
            throw new TextFormatException(path, $"{where}.pattern", "is missing or not an object");
        if (p.OptString("String", path, where + ".pattern") is { } literal) return SplitPattern.Literal(literal);
        if (p.OptString("Regex", path, where + ".pattern") is { } regex) return SplitPattern.Regex(regex, path, where + ".pattern");
        throw new TextFormatException(path, $"{where}.pattern", "must hold \"String\" or \"Regex\"");
    }

    private SplitBehavior ReadBehavior(JsonElement e, string where)
    {
        string b = e.ReqString("behavior", path, where);
        return b switch
        {
            "Removed" => SplitBehavior.Removed,
            "Isolated" => SplitBehavior.Isolated,
            "MergedWithPrevious" => SplitBehavior.MergedWithPrevious,
            "MergedWithNext" => SplitBehavior.MergedWithNext,
            "Contiguous" => SplitBehavior.Contiguous,
            _ => throw new TextFormatException(path, $"{where}.behavior", $"unknown split behavior '{b}'"),
        };
    }

    private char ReadReplacement(JsonElement e, string where) => ReadChar(e, "replacement", where);

    private char ReadChar(JsonElement e, string name, string where)
    {
        string s = e.ReqString(name, path, where);
        return s.Length == 1 ? s[0] : throw new TextFormatException(path, $"{where}.{name}", $"must be a single char, not '{s}'");
    }

    private PrependScheme ReadPrependScheme(JsonElement e, string where)
    {
        string? scheme = e.OptString("prepend_scheme", path, where);
        if (scheme is null) return e.OptBool("add_prefix_space", true, path, where) ? PrependScheme.Always : PrependScheme.Never;
        return scheme switch
        {
            "always" => PrependScheme.Always,
            "first" => PrependScheme.First,
            "never" => PrependScheme.Never,
            _ => throw new TextFormatException(path, $"{where}.prepend_scheme", $"unknown prepend scheme '{scheme}'"),
        };
    }

    public JsonElement.ArrayEnumerator ReqArray(JsonElement e, string name, string where)
    {
        if (e.OptElement(name) is not { ValueKind: JsonValueKind.Array } a)
            throw new TextFormatException(path, $"{where}.{name}", "is missing or not an array");
        return a.EnumerateArray();
    }

    private List<T> ReadList<T>(JsonElement e, string name, string where, Func<JsonElement, string, T> read)
    {
        var list = new List<T>();
        int i = 0;
        foreach (var x in ReqArray(e, name, where)) list.Add(read(x, $"{where}.{name}[{i++}]"));
        return list;
    }

    public BpeModel ReadModel(JsonElement? element)
    {
        const string where = "model";
        if (element is not { } e) throw new TextFormatException(path, where, "is missing");
        string type = e.OptString("type", path, where) ?? (e.OptElement("merges") is not null ? "BPE" : "?");
        if (type != "BPE")
            throw Unsupported(where, $"model type '{type}' is not supported (supported: BPE; WordPiece, WordLevel and Unigram are not implemented)");
        if (e.OptDouble("dropout", path, where) is { } dropout && dropout > 0)
            throw Unsupported($"{where}.dropout", "BPE dropout is a training-time randomization and is not supported");

        if (e.OptElement("vocab") is not { ValueKind: JsonValueKind.Object } vocabElement)
            throw new TextFormatException(path, $"{where}.vocab", "is missing or not an object");
        var vocab = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var p in vocabElement.EnumerateObject())
        {
            if (p.Value.ValueKind != JsonValueKind.Number || !p.Value.TryGetInt32(out int id) || id < 0)
                throw new TextFormatException(path, $"{where}.vocab.{p.Name}", $"id must be a non-negative integer, not {p.Value.GetRawText()}");
            if (!vocab.TryAdd(p.Name, id))
                throw new TextFormatException(path, $"{where}.vocab.{p.Name}", "appears twice");
        }

        var merges = new List<(string, string)>();
        int k = 0;
        foreach (var m in ReqArray(e, "merges", where))
        {
            string w = $"{where}.merges[{k++}]";
            if (m.ValueKind == JsonValueKind.String)
            {
                string s = m.GetString()!;
                int space = s.IndexOf(' ');
                if (space <= 0 || space == s.Length - 1 || s.IndexOf(' ', space + 1) >= 0)
                    throw new TextFormatException(path, w, $"merge '{s}' must be two tokens separated by one space");
                merges.Add((s[..space], s[(space + 1)..]));
            }
            else if (m.ValueKind == JsonValueKind.Array && m.GetArrayLength() == 2
                     && m[0].ValueKind == JsonValueKind.String && m[1].ValueKind == JsonValueKind.String)
            {
                merges.Add((m[0].GetString()!, m[1].GetString()!));
            }
            else
            {
                throw new TextFormatException(path, w, "must be \"a b\" or [\"a\", \"b\"]");
            }
        }
        return new BpeModel(vocab, merges, e.OptString("unk_token", path, where),
            e.OptBool("byte_fallback", false, path, where), e.OptBool("fuse_unk", false, path, where),
            e.OptBool("ignore_merges", false, path, where), e.OptString("continuing_subword_prefix", path, where),
            e.OptString("end_of_word_suffix", path, where), path);
    }

    public List<AddedToken> ReadAddedTokens(JsonElement root)
    {
        var list = new List<AddedToken>();
        if (root.OptElement("added_tokens") is not { } a) return list;
        if (a.ValueKind != JsonValueKind.Array) throw new TextFormatException(path, "added_tokens", "must be an array");
        int i = 0;
        foreach (var t in a.EnumerateArray())
        {
            string w = $"added_tokens[{i++}]";
            int id = t.OptInt("id", path, w) ?? throw new TextFormatException(path, $"{w}.id", "is missing");
            if (id < 0) throw new TextFormatException(path, $"{w}.id", "must be non-negative");
            list.Add(new AddedToken(id, t.ReqString("content", path, w), t.OptBool("special", false, path, w),
                t.OptBool("lstrip", false, path, w), t.OptBool("rstrip", false, path, w),
                t.OptBool("normalized", true, path, w), t.OptBool("single_word", false, path, w)));
        }
        return list;
    }
}
