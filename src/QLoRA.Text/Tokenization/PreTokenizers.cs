namespace QLoRA.Text.Tokenization;

/// <summary>How a split treats the delimiters it finds (tokenizers' <c>SplitDelimiterBehavior</c>).</summary>
internal enum SplitBehavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous }

/// <summary>A tokenizer.json pre-tokenizer: cuts normalized text into the pieces the model tokenizes one by one.</summary>
internal abstract class PreTokenizer
{
    /// <summary>Splits <paramref name="piece"/>, appending the non-empty results to <paramref name="output"/>.</summary>
    public abstract void Split(NormalizedText piece, List<NormalizedText> output);

    /// <summary>Cuts text at the given matches per <paramref name="behavior"/>; <paramref name="invert"/> makes the matches the pieces.</summary>
    protected static void SplitByMatches(NormalizedText piece, List<(int Start, int End)> matches, SplitBehavior behavior,
        bool invert, List<NormalizedText> output)
    {
        string t = piece.Text;
        // Segments covering the text, each a delimiter or not.
        var segments = new List<(int Start, int End, bool Delimiter)>(matches.Count * 2 + 1);
        int at = 0;
        foreach (var (s, e) in matches)
        {
            if (s > at) segments.Add((at, s, invert));
            segments.Add((s, e, !invert));
            at = e;
        }
        if (at < t.Length) segments.Add((at, t.Length, invert));

        var result = new List<(int Start, int End)>(segments.Count);
        bool previousDelimiter = false;
        switch (behavior)
        {
            case SplitBehavior.Removed:
                foreach (var (s, e, d) in segments) if (!d) result.Add((s, e));
                break;
            case SplitBehavior.Isolated:
                foreach (var (s, e, _) in segments) result.Add((s, e));
                break;
            case SplitBehavior.MergedWithPrevious:
                foreach (var (s, e, d) in segments)
                {
                    if (d && !previousDelimiter && result.Count > 0) result[^1] = (result[^1].Start, e);
                    else result.Add((s, e));
                    previousDelimiter = d;
                }
                break;
            case SplitBehavior.MergedWithNext:
                for (int i = segments.Count - 1; i >= 0; i--)
                {
                    var (s, e, d) = segments[i];
                    if (d && !previousDelimiter && result.Count > 0) result[^1] = (s, result[^1].End);
                    else result.Add((s, e));
                    previousDelimiter = d;
                }
                result.Reverse();
                break;
            case SplitBehavior.Contiguous:
                foreach (var (s, e, d) in segments)
                {
                    if (d && previousDelimiter && result.Count > 0) result[^1] = (result[^1].Start, e);
                    else result.Add((s, e));
                    previousDelimiter = d;
                }
                break;
        }
        foreach (var (s, e) in result)
            if (e > s) output.Add(piece.Slice(s, e));
    }
}

internal sealed class SequencePreTokenizer(IReadOnlyList<PreTokenizer> steps) : PreTokenizer
{
    public override void Split(NormalizedText piece, List<NormalizedText> output)
    {
        var current = new List<NormalizedText> { piece };
        var next = new List<NormalizedText>();
        foreach (var step in steps)
        {
            next.Clear();
            foreach (var p in current) step.Split(p, next);
            (current, next) = (next, current);
        }
        output.AddRange(current);
    }
}

/// <summary><c>Split</c>: a literal or regex pattern with a delimiter behavior.</summary>
internal sealed class PatternPreTokenizer(SplitPattern pattern, SplitBehavior behavior, bool invert) : PreTokenizer
{
    public override void Split(NormalizedText piece, List<NormalizedText> output)
    {
        var matches = new List<(int, int)>();
        pattern.Matches(piece.Text, matches);
        SplitByMatches(piece, matches, behavior, invert, output);
    }
}

/// <summary>
/// <c>ByteLevel</c>: optional prefix space and GPT-2's split regex; the byte-to-char mapping itself is applied when the
/// model reads each piece (it must therefore be the last pre-tokenizer, as in every byte-level tokenizer.json).
/// </summary>
internal sealed class ByteLevelPreTokenizer(bool addPrefixSpace, CodePointRegex? gpt2Split) : PreTokenizer
{
    public const string Gpt2Pattern = @"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

    public override void Split(NormalizedText piece, List<NormalizedText> output)
    {
        if (addPrefixSpace && !piece.Text.StartsWith(' '))
        {
            var b = piece.Rebuild();
            b.Replace(0, 0, " ");
            b.Keep(0, piece.Text.Length);
            piece = b.Build();
        }
        if (gpt2Split is null)
        {
            if (piece.Text.Length > 0) output.Add(piece);
            return;
        }
        var matches = new List<(int, int)>();
        gpt2Split.Matches(piece.Text, matches);
        SplitByMatches(piece, matches, SplitBehavior.Isolated, false, output);
    }
}

/// <summary>How <c>Metaspace</c> adds the replacement char in front of a piece.</summary>
internal enum PrependScheme { Always, First, Never }

/// <summary><c>Metaspace</c>: spaces become the replacement char ("▁"), a leading one is added per scheme, and the text is split before each.</summary>
internal sealed class MetaspacePreTokenizer(char replacement, PrependScheme scheme, bool split) : PreTokenizer
{
    public override void Split(NormalizedText piece, List<NormalizedText> output)
    {
        piece = piece.MapChars(c => c == ' ' ? replacement : c);
        bool prepend = scheme == PrependScheme.Always || (scheme == PrependScheme.First && piece.OriginalSpan(0, Math.Min(1, piece.Text.Length)).Start == 0);
        if (prepend && !piece.Text.StartsWith(replacement) && scheme != PrependScheme.Never)
        {
            var b = piece.Rebuild();
            b.Replace(0, 0, replacement.ToString());
            b.Keep(0, piece.Text.Length);
            piece = b.Build();
        }
        if (!split)
        {
            if (piece.Text.Length > 0) output.Add(piece);
            return;
        }
        var matches = new List<(int, int)>();
        SplitPattern.Literal(replacement.ToString()).Matches(piece.Text, matches);
        SplitByMatches(piece, matches, SplitBehavior.MergedWithNext, false, output);
    }
}

/// <summary><c>Digits</c>: digits apart from the rest, one by one or in runs.</summary>
internal sealed class DigitsPreTokenizer(bool individual) : PreTokenizer
{
    public override void Split(NormalizedText piece, List<NormalizedText> output)
    {
        var matches = new List<(int Start, int End)>();
        string t = piece.Text;
        for (int i = 0; i < t.Length; i++)
            if (char.IsNumber(t[i])) matches.Add((i, i + 1));
        SplitByMatches(piece, matches, individual ? SplitBehavior.Isolated : SplitBehavior.Contiguous, false, output);
    }
}

/// <summary><c>WhitespaceSplit</c>: splits on whitespace, which is dropped.</summary>
internal sealed class WhitespaceSplitPreTokenizer : PreTokenizer
{
    public override void Split(NormalizedText piece, List<NormalizedText> output)
    {
        var matches = new List<(int Start, int End)>();
        string t = piece.Text;
        for (int i = 0; i < t.Length; i++)
            if (char.IsWhiteSpace(t[i])) matches.Add((i, i + 1));
        SplitByMatches(piece, matches, SplitBehavior.Removed, false, output);
    }
}
