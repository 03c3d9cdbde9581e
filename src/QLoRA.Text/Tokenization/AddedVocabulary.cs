using System.Buffers;

namespace QLoRA.Text.Tokenization;

/// <summary>
/// Finds added tokens in text as the Rust library does: leftmost-longest matches, <c>single_word</c> matches only
/// between non-word chars, <c>lstrip</c>/<c>rstrip</c> widen a match over adjacent whitespace.
/// </summary>
internal sealed class AddedTokenMatcher
{
    private readonly Dictionary<char, AddedToken[]> _byFirstChar = new();
    private readonly SearchValues<char> _firstChars;

    public AddedTokenMatcher(IEnumerable<AddedToken> tokens, Func<string, string> contentOf)
    {
        var groups = new Dictionary<char, List<(string Text, AddedToken Token)>>();
        foreach (var t in tokens)
        {
            string text = contentOf(t.Content);
            if (text.Length == 0) continue;
            if (!groups.TryGetValue(text[0], out var list)) groups[text[0]] = list = [];
            list.Add((text, t));
        }
        foreach (var (c, list) in groups)
        {
            list.Sort((a, b) => b.Text.Length.CompareTo(a.Text.Length));   // longest first
            _byFirstChar[c] = [.. list.Select(x => x.Token with { Content = x.Text })];
        }
        _firstChars = SearchValues.Create([.. _byFirstChar.Keys]);
        IsEmpty = _byFirstChar.Count == 0;
    }

    public bool IsEmpty { get; }

    /// <summary>The matches in <paramref name="text"/> as (start, end, token), in order and non-overlapping.</summary>
    public List<(int Start, int End, AddedToken Token)> Find(string text)
    {
        var result = new List<(int, int, AddedToken)>();
        if (IsEmpty) return result;
        int covered = 0;    // end of the previous match (its rstrip included)
        int at = 0;
        while (at < text.Length)
        {
            int i = text.AsSpan(at).IndexOfAny(_firstChars);
            if (i < 0) break;
            i += at;
            AddedToken? match = null;
            foreach (var t in _byFirstChar[text[i]])
            {
                if (i + t.Content.Length > text.Length || string.CompareOrdinal(text, i, t.Content, 0, t.Content.Length) != 0) continue;
                match = t;
                break;
            }
            if (match is null)
            {
                at = i + 1;
                continue;
            }
            int start = i, stop = i + match.Content.Length;
            // The Rust library scans with one automaton: a match discarded for single_word still consumes its text.
            at = stop;
            if (match.SingleWord)
            {
                bool leftOk = start == 0 || !IsWordChar(text, start - 1, before: true);
                bool rightOk = stop == text.Length || !IsWordChar(text, stop, before: false);
                if (!leftOk || !rightOk) continue;
            }
            if (match.LStrip)
            {
                int s = start;
                while (s > 0 && char.IsWhiteSpace(text[s - 1])) s--;
                start = Math.Max(s, covered);
            }
            if (match.RStrip)
                while (stop < text.Length && char.IsWhiteSpace(text[stop])) stop++;
            result.Add((start, stop, match));
            covered = stop;
            at = stop;
        }
        return result;
    }

    private static bool IsWordChar(string text, int index, bool before)
    {
        int cp;
        if (before && char.IsLowSurrogate(text[index]) && index > 0 && char.IsHighSurrogate(text[index - 1]))
            cp = char.ConvertToUtf32(text[index - 1], text[index]);
        else if (!before && char.IsHighSurrogate(text[index]) && index + 1 < text.Length && char.IsLowSurrogate(text[index + 1]))
            cp = char.ConvertToUtf32(text[index], text[index + 1]);
        else
            cp = text[index];
        var cat = System.Globalization.CharUnicodeInfo.GetUnicodeCategory(cp);
        return cat is >= System.Globalization.UnicodeCategory.UppercaseLetter and <= System.Globalization.UnicodeCategory.OtherLetter
            or System.Globalization.UnicodeCategory.DecimalDigitNumber or System.Globalization.UnicodeCategory.LetterNumber
            or System.Globalization.UnicodeCategory.OtherNumber;
    }
}
