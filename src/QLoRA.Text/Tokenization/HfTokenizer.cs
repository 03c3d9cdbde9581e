using System.Buffers;
using System.Text;
using System.Text.Json;

namespace QLoRA.Text.Tokenization;

/// <summary>
/// A Hugging Face tokenizer loaded from tokenizer.json (byte-level BPE as in Llama 3 and Qwen, SentencePiece-style BPE
/// with byte fallback as in Llama 2, Mistral and Gemma) or from a SentencePiece <c>tokenizer.model</c>, encoding and
/// decoding exactly as the Rust library and transformers do. Thread-safe.
/// </summary>
public sealed partial class HfTokenizer
{
    private readonly Normalizer? _normalizer;
    private readonly PreTokenizer? _preTokenizer;
    private readonly bool _byteLevel;
    private readonly BpeModel _model;
    private readonly Decoder? _decoder;
    private readonly PostProcessor? _postProcessor;
    private readonly AddedTokenMatcher _rawMatcher;
    private readonly AddedTokenMatcher _normalizedMatcher;
    private readonly Dictionary<int, AddedToken> _addedById = new();
    private readonly Dictionary<string, AddedToken> _addedByContent = new(StringComparer.Ordinal);

    internal HfTokenizer(string sourcePath, Normalizer? normalizer, PreTokenizer? preTokenizer, bool byteLevel, BpeModel model,
        Decoder? decoder, PostProcessor? postProcessor, IReadOnlyList<AddedToken> addedTokens, TokenizerConfig config)
    {
        SourcePath = sourcePath;
        _normalizer = normalizer;
        _preTokenizer = preTokenizer;
        _byteLevel = byteLevel;
        _model = model;
        _decoder = decoder;
        _postProcessor = postProcessor;
        foreach (var t in addedTokens)
        {
            _addedById[t.Id] = t;
            _addedByContent[t.Content] = t;
        }
        AddedTokens = addedTokens;
        _rawMatcher = new AddedTokenMatcher(addedTokens.Where(t => !t.Normalized), c => c);
        _normalizedMatcher = new AddedTokenMatcher(addedTokens.Where(t => t.Normalized),
            c => normalizer is null ? c : normalizer.Normalize(NormalizedText.Original(c)).Text);
        Config = config;
        int size = model.VocabularySize;
        foreach (var t in addedTokens) size = Math.Max(size, t.Id + 1);
        VocabularySize = size;
        BosTokenId = config.BosToken is { } b ? TokenToId(b) : null;
        EosTokenId = config.EosToken is { } e ? TokenToId(e) : null;
        PadTokenId = config.PadToken is { } p ? TokenToId(p) : null;
        UnkTokenId = model.UnkId >= 0 ? model.UnkId : null;
    }

    /// <summary>The file the tokenizer was read from.</summary>
    public string SourcePath { get; }

    /// <summary>tokenizer_config.json's settings (defaults when the folder has none).</summary>
    public TokenizerConfig Config { get; }

    /// <summary>Added tokens (special and not) as tokenizer.json lists them.</summary>
    public IReadOnlyList<AddedToken> AddedTokens { get; }

    /// <summary>Highest id + 1 over the model's vocabulary and the added tokens.</summary>
    public int VocabularySize { get; }

    /// <summary>Id of tokenizer_config.json's <c>bos_token</c>, if it has one.</summary>
    public int? BosTokenId { get; }

    /// <summary>Id of tokenizer_config.json's <c>eos_token</c>, if it has one.</summary>
    public int? EosTokenId { get; }

    /// <summary>Id of tokenizer_config.json's <c>pad_token</c>, if it has one.</summary>
    public int? PadTokenId { get; }

    /// <summary>Id of the model's unknown token, if it has one.</summary>
    public int? UnkTokenId { get; }

    /// <summary>The token string of <paramref name="id"/> (added tokens first), or null.</summary>
    public string? IdToToken(int id) => _addedById.TryGetValue(id, out var t) ? t.Content : _model.IdToToken(id);

    /// <summary>The id of a token string (added tokens first), or null.</summary>
    public int? TokenToId(string token) =>
        _addedByContent.TryGetValue(token, out var t) ? t.Id : _model.TryGetId(token, out int id) ? id : null;

    /// <summary>Whether <paramref name="id"/> is an added token marked special (what <c>skip_special_tokens</c> drops).</summary>
    public bool IsSpecial(int id) => _addedById.TryGetValue(id, out var t) && t.Special;

    /// <summary>Encodes text to ids; <paramref name="addSpecialTokens"/> applies the post-processor's template (e.g. BOS).</summary>
    /// <remarks>Encode a rendered chat template with <paramref name="addSpecialTokens"/> false: the template writes BOS itself.</remarks>
    public int[] Encode(string text, bool addSpecialTokens = true)
    {
        ArgumentNullException.ThrowIfNull(text);
        var ids = new List<int>(text.Length / 3 + 4);
        EncodeCore(text, ids, null);
        _postProcessor?.Process(ids, null, addSpecialTokens, IdToToken);
        return [.. ids];
    }

    /// <summary>Encodes text to ids with the input span of each token.</summary>
    public TokenEncoding EncodeWithOffsets(string text, bool addSpecialTokens = true)
    {
        ArgumentNullException.ThrowIfNull(text);
        var ids = new List<int>(text.Length / 3 + 4);
        var offsets = new List<(int, int)>(text.Length / 3 + 4);
        EncodeCore(text, ids, offsets);
        _postProcessor?.Process(ids, offsets, addSpecialTokens, IdToToken);
        return new TokenEncoding([.. ids], [.. offsets]);
    }

    private void EncodeCore(string text, List<int> ids, List<(int, int)>? offsets)
    {
        var pieces = new List<NormalizedText>();
        int at = 0;
        foreach (var (s, e, token) in _rawMatcher.Find(text))
        {
            if (s > at) EncodeSegment(NormalizedText.Original(text[at..s], at), ids, offsets, pieces);
            ids.Add(token.Id);
            offsets?.Add((s, e));
            at = e;
        }
        if (at < text.Length) EncodeSegment(at == 0 ? NormalizedText.Original(text) : NormalizedText.Original(text[at..], at), ids, offsets, pieces);
    }

    private void EncodeSegment(NormalizedText raw, List<int> ids, List<(int, int)>? offsets, List<NormalizedText> pieces)
    {
        var normalized = _normalizer is null ? raw : _normalizer.Normalize(raw);
        int at = 0;
        foreach (var (s, e, token) in _normalizedMatcher.Find(normalized.Text))
        {
            if (s > at) EncodeNormalized(normalized.Slice(at, s), ids, offsets, pieces);
            ids.Add(token.Id);
            offsets?.Add(normalized.OriginalSpan(s, e));
            at = e;
        }
        if (at < normalized.Text.Length) EncodeNormalized(normalized.Slice(at, normalized.Text.Length), ids, offsets, pieces);
    }

    private void EncodeNormalized(NormalizedText text, List<int> ids, List<(int, int)>? offsets, List<NormalizedText> pieces)
    {
        pieces.Clear();
        if (_preTokenizer is null) pieces.Add(text); else _preTokenizer.Split(text, pieces);
        var spans = offsets is null ? null : new List<(int Start, int End)>();
        foreach (var piece in pieces)
        {
            spans?.Clear();
            if (_byteLevel) TokenizeByteLevel(piece, ids, spans, offsets);
            else
            {
                _model.Tokenize(piece.Text, ids, spans);
                if (spans is not null) foreach (var (s, e) in spans) offsets!.Add(piece.OriginalSpan(s, e));
            }
        }
    }

    private void TokenizeByteLevel(NormalizedText piece, List<int> ids, List<(int Start, int End)>? spans, List<(int, int)>? offsets)
    {
        string t = piece.Text;
        int maxBytes = Encoding.UTF8.GetMaxByteCount(t.Length);
        byte[]? rentedBytes = null;
        char[]? rentedChars = null;
        Span<byte> bytes = maxBytes <= 1024 ? stackalloc byte[1024] : (rentedBytes = ArrayPool<byte>.Shared.Rent(maxBytes));
        Span<char> mapped = maxBytes <= 1024 ? stackalloc char[1024] : (rentedChars = ArrayPool<char>.Shared.Rent(maxBytes));
        try
        {
            int n = Encoding.UTF8.GetBytes(t, bytes);
            var alphabet = ByteLevelAlphabet.ByteToChar;
            for (int i = 0; i < n; i++) mapped[i] = alphabet[bytes[i]];
            _model.Tokenize(mapped[..n], ids, spans);
            if (spans is null) return;
            // Byte index → the char of the piece it belongs to.
            var charOfByte = new int[n + 1];
            int b = 0;
            for (int c = 0; c < t.Length; c++)
            {
                int width = char.IsHighSurrogate(t[c]) && c + 1 < t.Length && char.IsLowSurrogate(t[c + 1]) ? 2 : 1;
                int count = Encoding.UTF8.GetByteCount(t.AsSpan(c, width));
                for (int k = 0; k < count; k++) charOfByte[b++] = c;
                c += width - 1;
            }
            charOfByte[n] = t.Length;
            foreach (var (s, e) in spans)
            {
                int cs = charOfByte[s];
                int last = charOfByte[e - 1];
                int ce = last + (char.IsHighSurrogate(t[last]) && last + 1 < t.Length ? 2 : 1);
                offsets!.Add(piece.OriginalSpan(cs, ce));
            }
        }
        finally
        {
            if (rentedBytes is not null) ArrayPool<byte>.Shared.Return(rentedBytes);
            if (rentedChars is not null) ArrayPool<char>.Shared.Return(rentedChars);
        }
    }

    /// <summary>
    /// Decodes ids to text as transformers does: the tokenizer's decoder over the token strings, special tokens dropped
    /// when <paramref name="skipSpecialTokens"/>, then <c>clean_up_tokenization_spaces</c> (the config's value unless given).
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">An id outside the vocabulary.</exception>
    public string Decode(ReadOnlySpan<int> ids, bool skipSpecialTokens = false, bool? cleanUpTokenizationSpaces = null)
    {
        var tokens = new List<string>(ids.Length);
        foreach (int id in ids)
        {
            string token = IdToToken(id) ?? throw new ArgumentOutOfRangeException(nameof(ids), id, $"id {id} is not in the vocabulary of {SourcePath}");
            if (skipSpecialTokens && IsSpecial(id)) continue;
            tokens.Add(token);
        }
        string text = _decoder is null ? string.Join(" ", tokens) : string.Concat(_decoder.DecodeChain(tokens));
        return cleanUpTokenizationSpaces ?? Config.CleanUpTokenizationSpaces ? CleanUpTokenizationSpaces(text) : text;
    }

    /// <summary>A streaming detokenizer for generated ids (see <see cref="IncrementalDetokenizer"/>).</summary>
    public IncrementalDetokenizer CreateDetokenizer(bool skipSpecialTokens = true, bool? cleanUpTokenizationSpaces = null) =>
        new(this, skipSpecialTokens, cleanUpTokenizationSpaces);

    /// <summary>transformers' <c>clean_up_tokenization</c>: removes the space before punctuation and English contractions.</summary>
    public static string CleanUpTokenizationSpaces(string text) => text
        .Replace(" .", ".", StringComparison.Ordinal).Replace(" ?", "?", StringComparison.Ordinal)
        .Replace(" !", "!", StringComparison.Ordinal).Replace(" ,", ",", StringComparison.Ordinal)
        .Replace(" ' ", "'", StringComparison.Ordinal).Replace(" n't", "n't", StringComparison.Ordinal)
        .Replace(" 'm", "'m", StringComparison.Ordinal).Replace(" 's", "'s", StringComparison.Ordinal)
        .Replace(" 've", "'ve", StringComparison.Ordinal).Replace(" 're", "'re", StringComparison.Ordinal);

    /// <summary>Whether the post-processor adds a BOS token when <c>add_special_tokens</c> is on.</summary>
    public IReadOnlyList<int> SpecialTokensBefore => FindTemplate(_postProcessor)?.Before ?? [];

    /// <summary>The ids the post-processor appends when <c>add_special_tokens</c> is on.</summary>
    public IReadOnlyList<int> SpecialTokensAfter => FindTemplate(_postProcessor)?.After ?? [];

    private static TemplatePostProcessor? FindTemplate(PostProcessor? p) => p switch
    {
        TemplatePostProcessor t => t,
        _ => null,
    };

    /// <summary>Loads tokenizer.json (and, if present beside it, tokenizer_config.json).</summary>
    /// <exception cref="TextFormatException">The file is malformed; the message names the file and the component.</exception>
    /// <exception cref="UnsupportedTokenizerComponentException">The file uses a component this library does not implement.</exception>
    public static HfTokenizer FromFile(string tokenizerJsonPath, TokenizerConfig? config = null)
    {
        string dir = Path.GetDirectoryName(Path.GetFullPath(tokenizerJsonPath))!;
        config ??= TokenizerConfig.Load(dir);
        using var doc = JsonFile.Parse(tokenizerJsonPath);
        return FromJson(doc.RootElement, tokenizerJsonPath, config);
    }

    /// <summary>
    /// Loads the tokenizer of a checkpoint folder: tokenizer.json, or a SentencePiece tokenizer.model when there is no
    /// tokenizer.json; tokenizer_config.json supplies the special tokens and the chat template.
    /// </summary>
    public static HfTokenizer FromFolder(string folder)
    {
        var config = TokenizerConfig.Load(folder);
        string json = Path.Combine(folder, "tokenizer.json");
        if (File.Exists(json)) return FromFile(json, config);
        string model = Path.Combine(folder, "tokenizer.model");
        if (File.Exists(model)) return SentencePieceModel.Load(model, config);
        throw new FileNotFoundException($"{folder}: no tokenizer.json or tokenizer.model", json);
    }

    /// <summary>
    /// The ids the Rust library gives added tokens when it loads a file: in file order, a token whose content is already
    /// known (an earlier added token or the model's vocabulary) takes that id, any other the next id after the model's
    /// vocabulary and the added tokens so far. The ids written in the file are only a check there; so they are here.
    /// </summary>
    private static List<AddedToken> AssignIds(List<AddedToken> tokens, BpeModel model)
    {
        var idOf = new Dictionary<string, int>(StringComparer.Ordinal);
        var byId = new Dictionary<int, AddedToken>();
        var seen = new HashSet<AddedToken>();
        int vocabSize = model.VocabularyCount;
        foreach (var t in tokens)
        {
            if (t.Content.Length == 0 || !seen.Add(t with { Id = 0 })) continue;   // an identical token is ignored
            if (!idOf.TryGetValue(t.Content, out int id) && !model.TryGetId(t.Content, out id))
            {
                if (idOf.Count == 0) id = vocabSize;
                else
                {
                    int max = idOf.Values.Max();
                    id = max >= vocabSize || vocabSize == 0 ? max + 1 : vocabSize;
                }
            }
            idOf[t.Content] = id;
            byId[id] = t with { Id = id };
        }
        // One entry per content (a later duplicate replaced the earlier), in id order as the library serializes them.
        return [.. byId.Values.Where(t => idOf[t.Content] == t.Id).OrderBy(t => t.Id)];
    }

    // transformers' LlamaTokenizerFast and GemmaTokenizerFast rebuild their template from add_bos_token/add_eos_token
    // when they load (update_post_processor), so those flags win over tokenizer.json for these classes.
    private static readonly HashSet<string> ClassesWithBosEosFlags = new(StringComparer.Ordinal)
    {
        "LlamaTokenizer", "LlamaTokenizerFast", "CodeLlamaTokenizer", "CodeLlamaTokenizerFast", "GemmaTokenizer", "GemmaTokenizerFast",
    };

    private static PostProcessor? ApplyAddBosEos(PostProcessor? post, TokenizerConfig config, Func<string, int?> idOf)
    {
        if (config.TokenizerClass is not { } cls || !ClassesWithBosEosFlags.Contains(cls)) return post;
        if (config.AddBosToken is null && config.AddEosToken is null) return post;
        if (post is not (null or TemplatePostProcessor)) return post;
        var before = new List<int>();
        var after = new List<int>();
        if (config.AddBosToken ?? true)
        {
            if (config.BosToken is not { } bos || idOf(bos) is not int b) return post;
            before.Add(b);
        }
        if (config.AddEosToken ?? false)
        {
            if (config.EosToken is not { } eos || idOf(eos) is not int e) return post;
            after.Add(e);
        }
        return new TemplatePostProcessor(before, after);
    }

    internal static HfTokenizer FromJson(JsonElement root, string path, TokenizerConfig config)
    {
        if (root.ValueKind != JsonValueKind.Object) throw new TextFormatException(path, null, "must be a JSON object");
        var reader = new TokenizerJsonReader(path);
        if (root.OptElement("truncation") is not null || root.OptElement("padding") is not null)
        {
            // transformers disables both when loading; they do not change what encode returns for a single text.
        }
        var normalizer = reader.ReadNormalizer(root.OptElement("normalizer"));
        var pre = reader.ReadPreTokenizer(root.OptElement("pre_tokenizer"), out bool byteLevel);
        var model = reader.ReadModel(root.OptElement("model"));
        var added = AssignIds(reader.ReadAddedTokens(root), model);
        var decoder = reader.ReadDecoder(root.OptElement("decoder"));
        var lookup = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var t in added) lookup[t.Content] = t.Id;
        var post = reader.ReadPostProcessor(root.OptElement("post_processor"),
            name => lookup.TryGetValue(name, out int id) ? id : model.TryGetId(name, out int m) ? m : null);
        post = ApplyAddBosEos(post, config, name => lookup.TryGetValue(name, out int id) ? id : model.TryGetId(name, out int m) ? m : null);
        return new HfTokenizer(path, normalizer, pre, byteLevel, model, decoder, post, added, config);
    }
}
