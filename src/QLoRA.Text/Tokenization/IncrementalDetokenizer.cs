namespace QLoRA.Text.Tokenization;

/// <summary>
/// Turns a stream of generated ids into text deltas whose concatenation equals <see cref="HfTokenizer.Decode"/> of
/// all the ids. Text is emitted only once it is final: a character split over byte-fallback or byte-level tokens
/// (a 4-byte emoji) is held back until complete, and SentencePiece's leading-space rule is kept by decoding a window
/// that starts at the previously emitted tokens and emitting only what the new token adds to it.
/// </summary>
/// <remarks>Not thread-safe: one instance per sequence.</remarks>
public sealed class IncrementalDetokenizer
{
    private readonly HfTokenizer _tokenizer;
    private readonly bool _skipSpecialTokens;
    private readonly bool _cleanUp;
    private readonly List<int> _ids = [];
    private int _prefixOffset;
    private int _readOffset;
    private string _pending = "";   // final text held back only for clean_up_tokenization_spaces
    private string? _prefixText;    // Decode of ids[_prefixOffset.._readOffset], kept while the offsets stay

    /// <summary>Creates a detokenizer; <paramref name="cleanUpTokenizationSpaces"/> defaults to the tokenizer config's value.</summary>
    public IncrementalDetokenizer(HfTokenizer tokenizer, bool skipSpecialTokens = true, bool? cleanUpTokenizationSpaces = null)
    {
        _tokenizer = tokenizer;
        _skipSpecialTokens = skipSpecialTokens;
        _cleanUp = cleanUpTokenizationSpaces ?? tokenizer.Config.CleanUpTokenizationSpaces;
    }

    /// <summary>All ids added so far.</summary>
    public IReadOnlyList<int> Ids => _ids;

    /// <summary>Adds one id; returns the text that became final (possibly empty).</summary>
    public string Add(int id)
    {
        _ids.Add(id);
        var span = System.Runtime.InteropServices.CollectionsMarshal.AsSpan(_ids);
        // The window's prefix decodes the same until the offsets move: decode it once per emit, not per token.
        string prefixText = _prefixText ??= _tokenizer.Decode(span[_prefixOffset.._readOffset], _skipSpecialTokens, cleanUpTokenizationSpaces: false);
        string newText = _tokenizer.Decode(span[_prefixOffset..], _skipSpecialTokens, cleanUpTokenizationSpaces: false);
        if (newText.Length <= prefixText.Length || !newText.StartsWith(prefixText, StringComparison.Ordinal) || EndsIncomplete(newText))
            return "";
        string delta = newText[prefixText.Length..];
        _prefixOffset = _readOffset;
        _readOffset = _ids.Count;
        _prefixText = null;
        return Release(delta, final: false);
    }

    /// <summary>Ends the stream: returns whatever was still held back.</summary>
    public string Flush()
    {
        var span = System.Runtime.InteropServices.CollectionsMarshal.AsSpan(_ids);
        string prefixText = _tokenizer.Decode(span[_prefixOffset.._readOffset], _skipSpecialTokens, cleanUpTokenizationSpaces: false);
        string newText = _tokenizer.Decode(span[_prefixOffset..], _skipSpecialTokens, cleanUpTokenizationSpaces: false);
        string delta = newText.StartsWith(prefixText, StringComparison.Ordinal) ? newText[prefixText.Length..] : "";
        _prefixOffset = _readOffset = _ids.Count;
        _prefixText = null;
        return Release(delta, final: true);
    }

    private string Release(string delta, bool final)
    {
        if (!_cleanUp) return delta;
        string text = _pending + delta;
        if (final)
        {
            _pending = "";
            return HfTokenizer.CleanUpTokenizationSpaces(text);
        }
        // Keep back the longest tail that is a proper prefix of a clean-up pattern: the next text could complete it.
        int keep = 0;
        foreach (var pattern in CleanUpPatterns)
            for (int k = Math.Min(pattern.Length - 1, text.Length); k > keep; k--)
                if (text.AsSpan(text.Length - k).SequenceEqual(pattern.AsSpan(0, k))) { keep = k; break; }
        string ready = text[..^keep];
        _pending = text[^keep..];
        return HfTokenizer.CleanUpTokenizationSpaces(ready);
    }

    private static readonly string[] CleanUpPatterns = [" .", " ?", " !", " ,", " ' ", " n't", " 'm", " 's", " 've", " 're"];

    private static bool EndsIncomplete(string text) => text.Length > 0 && text[^1] == '\uFFFD';
}
