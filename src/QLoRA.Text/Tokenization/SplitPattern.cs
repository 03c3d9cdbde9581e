namespace QLoRA.Text.Tokenization;

/// <summary>A tokenizer.json pattern: <c>{"String": "…"}</c> (a literal) or <c>{"Regex": "…"}</c>.</summary>
internal sealed class SplitPattern
{
    private readonly string? _literal;
    private readonly CodePointRegex? _regex;

    private SplitPattern(string? literal, CodePointRegex? regex)
    {
        _literal = literal;
        _regex = regex;
    }

    public static SplitPattern Literal(string text) => new(text, null);

    public static SplitPattern Regex(string pattern, string filePath, string componentPath) =>
        new(null, new CodePointRegex(pattern, filePath, componentPath));

    /// <summary>Appends the non-empty matches of the pattern in <paramref name="text"/>, left to right, non-overlapping.</summary>
    public void Matches(string text, List<(int Start, int End)> spans)
    {
        if (_regex is not null)
        {
            _regex.Matches(text, spans);
            return;
        }
        if (_literal!.Length == 0) return;
        int at = 0;
        while (at <= text.Length - _literal.Length)
        {
            int i = text.IndexOf(_literal, at, StringComparison.Ordinal);
            if (i < 0) break;
            spans.Add((i, i + _literal.Length));
            at = i + _literal.Length;
        }
    }
}
