using System.Text;

namespace QLoRA.Text.Tokenization;

/// <summary>A tokenizer.json normalizer: rewrites text, keeping each char's original span.</summary>
internal abstract class Normalizer
{
    public abstract NormalizedText Normalize(NormalizedText text);
}

internal sealed class SequenceNormalizer(IReadOnlyList<Normalizer> steps) : Normalizer
{
    public override NormalizedText Normalize(NormalizedText text)
    {
        foreach (var step in steps) text = step.Normalize(text);
        return text;
    }
}

/// <summary><c>Prepend</c>: puts a string before non-empty text (SentencePiece's dummy prefix "▁").</summary>
internal sealed class PrependNormalizer(string prefix) : Normalizer
{
    public override NormalizedText Normalize(NormalizedText text)
    {
        if (text.Text.Length == 0 || prefix.Length == 0) return text;
        var b = text.Rebuild();
        b.Replace(0, 0, prefix);
        b.Keep(0, text.Text.Length);
        return b.Build();
    }
}

/// <summary><c>Replace</c>: every match of the pattern becomes <c>content</c>.</summary>
internal sealed class ReplaceNormalizer(SplitPattern pattern, string content) : Normalizer
{
    public override NormalizedText Normalize(NormalizedText text)
    {
        var matches = new List<(int Start, int End)>();
        pattern.Matches(text.Text, matches);
        if (matches.Count == 0) return text;
        if (content.Length == 1 && matches.TrueForAll(m => m.End - m.Start == 1))
        {
            var chars = text.Text.ToCharArray();
            foreach (var (s, _) in matches) chars[s] = content[0];
            return text.WithSameLengthText(new string(chars));
        }
        var b = text.Rebuild();
        int at = 0;
        foreach (var (s, e) in matches)
        {
            b.Keep(at, s);
            b.Replace(s, e, content);
            at = e;
        }
        b.Keep(at, text.Text.Length);
        return b.Build();
    }
}

/// <summary><c>Strip</c>: removes leading and/or trailing whitespace.</summary>
internal sealed class StripNormalizer(bool left, bool right) : Normalizer
{
    public override NormalizedText Normalize(NormalizedText text)
    {
        string t = text.Text;
        int s = 0, e = t.Length;
        if (left) while (s < e && char.IsWhiteSpace(t[s])) s++;
        if (right) while (e > s && char.IsWhiteSpace(t[e - 1])) e--;
        return text.Slice(s, e);
    }
}

/// <summary><c>Lowercase</c>.</summary>
internal sealed class LowercaseNormalizer : Normalizer
{
    public override NormalizedText Normalize(NormalizedText text) => text.MapChars(char.ToLowerInvariant);
}

/// <summary><c>NFC</c>, <c>NFD</c>, <c>NFKC</c>, <c>NFKD</c>: Unicode normalization, aligned per combining sequence.</summary>
internal sealed class UnicodeNormalizer(NormalizationForm form, string name) : Normalizer
{
    private static readonly bool NormalizationAvailable = "e\u0301".Normalize(NormalizationForm.FormC).Length == 1;

    public override NormalizedText Normalize(NormalizedText text)
    {
        string t = text.Text;
        if (System.Text.Ascii.IsValid(t)) return text;
        if (!NormalizationAvailable)
            throw new InvalidOperationException(
                $"The tokenizer's {name} normalizer needs ICU's Unicode data, but this process runs with InvariantGlobalization=true; " +
                "set <InvariantGlobalization>false</InvariantGlobalization> (and install libicu) to tokenize non-ASCII text.");
        if (t.IsNormalized(form)) return text;

        // Normalize each combining sequence (a starter and the marks after it) on its own, so each output char maps to
        // the sequence it came from; fall back to one span for everything when that differs from normalizing the whole.
        string whole = t.Normalize(form);
        var b = text.Rebuild();
        var joined = new StringBuilder(whole.Length);
        int start = 0;
        for (int i = 1; i <= t.Length; i++)
        {
            if (i < t.Length && !IsStarter(t, i)) continue;
            string piece = t[start..i];
            string normalized = piece.IsNormalized(form) ? piece : piece.Normalize(form);
            if (normalized == piece) b.Keep(start, i); else b.Replace(start, i, normalized);
            joined.Append(normalized);
            start = i;
        }
        if (joined.ToString() == whole) return b.Build();
        var all = text.Rebuild();
        all.Replace(0, t.Length, whole);
        return all.Build();
    }

    private static bool IsStarter(string t, int i)
    {
        char c = t[i];
        if (char.IsLowSurrogate(c)) return false;
        if (c >= '\u1160' && c <= '\u11FF') return false; // Hangul medial vowels and final consonants compose with what precedes
        var category = char.IsHighSurrogate(c) && i + 1 < t.Length
            ? System.Globalization.CharUnicodeInfo.GetUnicodeCategory(char.ConvertToUtf32(c, t[i + 1]))
            : System.Globalization.CharUnicodeInfo.GetUnicodeCategory(c);
        return category is not (System.Globalization.UnicodeCategory.NonSpacingMark
            or System.Globalization.UnicodeCategory.SpacingCombiningMark
            or System.Globalization.UnicodeCategory.EnclosingMark);
    }
}
