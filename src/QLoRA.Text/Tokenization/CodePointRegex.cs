using System.Globalization;
using System.Text.RegularExpressions;

namespace QLoRA.Text.Tokenization;

/// <summary>
/// A tokenizer.json regex (Oniguruma syntax as the Rust library compiles it) run with code-point semantics.
/// </summary>
/// <remarks>
/// .NET's regex engine matches UTF-16 chars, so a character outside the BMP (an emoji, a CJK Extension B letter) is two
/// surrogates there and neither is <c>\p{L}</c> or <c>\p{So}</c>: <c>[^\r\n\p{L}\p{N}]?\p{L}+</c> would split a surrogate
/// pair. Tokenizer patterns tell such characters apart only by Unicode category, so the input is matched through a
/// proxy string in which each supplementary code point is one BMP char of the same general category; match bounds map
/// back through an index table. Patterns that could see the difference (a supplementary literal, or a literal equal to
/// a proxy char) are refused.
/// </remarks>
internal sealed class CodePointRegex
{
    private readonly Regex _regex;

    public CodePointRegex(string pattern, string filePath, string componentPath)
    {
        foreach (char c in pattern)
            if (char.IsSurrogate(c) || Array.IndexOf(Proxies, c) >= 0)
                throw new UnsupportedTokenizerComponentException(filePath, componentPath,
                    $"regex '{pattern}' contains the literal U+{(int)c:X4}, which code-point matching cannot honour");
        if (pattern.Contains("\\x{", StringComparison.Ordinal) || pattern.Contains("\\u{", StringComparison.Ordinal))
            throw new UnsupportedTokenizerComponentException(filePath, componentPath, $"regex '{pattern}' uses a \\x{{…}} escape");
        try
        {
            _regex = new Regex(pattern, RegexOptions.CultureInvariant | RegexOptions.Compiled);
        }
        catch (ArgumentException e)
        {
            throw new TextFormatException(filePath, componentPath, $"regex '{pattern}' does not compile: {e.Message}", e);
        }
        Pattern = pattern;
    }

    /// <summary>The pattern as the file gives it.</summary>
    public string Pattern { get; }

    /// <summary>Appends the [start, end) UTF-16 spans of the successive non-empty matches in <paramref name="text"/>.</summary>
    public void Matches(string text, List<(int Start, int End)> spans)
    {
        int firstSurrogate = text.AsSpan().IndexOfAnyInRange('\uD800', '\uDFFF');
        if (firstSurrogate < 0)
        {
            foreach (var m in _regex.EnumerateMatches(text))
                if (m.Length > 0) spans.Add((m.Index, m.Index + m.Length));
            return;
        }
        var (proxy, map) = BuildProxy(text);
        foreach (var m in _regex.EnumerateMatches(proxy))
            if (m.Length > 0) spans.Add((map[m.Index], map[m.Index + m.Length]));
    }

    private static (string Proxy, int[] Map) BuildProxy(string text)
    {
        var proxy = new char[text.Length];
        var map = new int[text.Length + 1];
        int n = 0;
        for (int i = 0; i < text.Length; i++)
        {
            map[n] = i;
            char c = text[i];
            if (char.IsHighSurrogate(c) && i + 1 < text.Length && char.IsLowSurrogate(text[i + 1]))
            {
                int cp = char.ConvertToUtf32(c, text[i + 1]);
                proxy[n++] = Proxies[(int)CharUnicodeInfo.GetUnicodeCategory(cp)];
                i++;
            }
            else
            {
                proxy[n++] = c;
            }
        }
        map[n] = text.Length;
        return (new string(proxy, 0, n), map);
    }

    // One BMP representative per UnicodeCategory (indexed by the enum's value), none of them ASCII or whitespace.
    private static readonly char[] Proxies =
    [
        '\u00C0', // UppercaseLetter
        '\u00DF', // LowercaseLetter
        '\u01C5', // TitlecaseLetter
        '\u02B0', // ModifierLetter
        '\u05D0', // OtherLetter
        '\u0300', // NonSpacingMark
        '\u0903', // SpacingCombiningMark
        '\u20DD', // EnclosingMark
        '\u0660', // DecimalDigitNumber
        '\u2160', // LetterNumber
        '\u00B2', // OtherNumber
        '\u2007', // SpaceSeparator (no supplementary code point has it)
        '\u2028', // LineSeparator (none supplementary)
        '\u2029', // ParagraphSeparator (none supplementary)
        '\u009F', // Control (none supplementary)
        '\u00AD', // Format
        '\uFFFD', // Surrogate (never produced: pairs are combined)
        '\uE000', // PrivateUse
        '\u203F', // ConnectorPunctuation
        '\u2010', // DashPunctuation
        '\u2045', // OpenPunctuation
        '\u2046', // ClosePunctuation
        '\u00AB', // InitialQuotePunctuation
        '\u00BB', // FinalQuotePunctuation
        '\u00A1', // OtherPunctuation
        '\u00B1', // MathSymbol
        '\u00A2', // CurrencySymbol
        '\u00A8', // ModifierSymbol
        '\u00A9', // OtherSymbol
        '\u0378', // OtherNotAssigned
    ];
}
