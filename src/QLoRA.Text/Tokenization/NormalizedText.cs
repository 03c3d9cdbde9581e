using System.Text;

namespace QLoRA.Text.Tokenization;

/// <summary>
/// A piece of text after normalization, with the original-text span of each UTF-16 char so token offsets can be
/// reported against the caller's string. Identity-aligned text (the common case) stores no arrays.
/// </summary>
internal sealed class NormalizedText
{
    private readonly int _base;
    private readonly int[]? _starts;
    private readonly int[]? _ends;

    private NormalizedText(string text, int @base, int[]? starts, int[]? ends)
    {
        Text = text;
        _base = @base;
        _starts = starts;
        _ends = ends;
    }

    /// <summary>The normalized text.</summary>
    public string Text { get; }

    /// <summary>Text that is its own original, starting at <paramref name="originalOffset"/> of the caller's string.</summary>
    public static NormalizedText Original(string text, int originalOffset = 0) => new(text, originalOffset, null, null);

    /// <summary>Original span [start, end) covered by normalized chars [start, end).</summary>
    public (int Start, int End) OriginalSpan(int start, int end)
    {
        if (_starts is null) return (_base + start, _base + end);
        if (start >= end)
        {
            int at = start < _starts.Length ? _starts[start] : (_ends!.Length > 0 ? _ends[^1] : _base);
            return (at, at);
        }
        int s = int.MaxValue, e = int.MinValue;
        for (int i = start; i < end; i++)
        {
            s = Math.Min(s, _starts[i]);
            e = Math.Max(e, _ends![i]);
        }
        return (s, e);
    }

    /// <summary>The normalized chars [start, end) with their alignment.</summary>
    public NormalizedText Slice(int start, int end)
    {
        if (start == 0 && end == Text.Length) return this;
        string text = Text.Substring(start, end - start);
        if (_starts is null) return new NormalizedText(text, _base + start, null, null);
        return new NormalizedText(text, 0, _starts[start..end], _ends![start..end]);
    }

    /// <summary>A copy with every char replaced one for one (alignment unchanged).</summary>
    public NormalizedText MapChars(Func<char, char> map)
    {
        var chars = Text.ToCharArray();
        bool changed = false;
        for (int i = 0; i < chars.Length; i++)
        {
            char c = map(chars[i]);
            changed |= c != chars[i];
            chars[i] = c;
        }
        return changed ? new NormalizedText(new string(chars), _base, _starts, _ends) : this;
    }

    /// <summary>The same alignment over a text of the same length whose chars were replaced one for one.</summary>
    public NormalizedText WithSameLengthText(string text) =>
        text.Length == Text.Length ? new NormalizedText(text, _base, _starts, _ends) : throw new ArgumentException("length differs", nameof(text));

    /// <summary>Starts a rebuilt text; pieces appended to the builder carry the alignment of the chars they replace.</summary>
    public Builder Rebuild() => new(this);

    /// <summary>Accumulates the chars of a transformed text with the original span of each.</summary>
    internal sealed class Builder(NormalizedText source)
    {
        private readonly StringBuilder _text = new(source.Text.Length + 8);
        private readonly List<int> _starts = new(source.Text.Length + 8);
        private readonly List<int> _ends = new(source.Text.Length + 8);

        /// <summary>Copies source chars [start, end) unchanged.</summary>
        public void Keep(int start, int end)
        {
            for (int i = start; i < end; i++)
            {
                var (s, e) = source.OriginalSpan(i, i + 1);
                _text.Append(source.Text[i]);
                _starts.Add(s);
                _ends.Add(e);
            }
        }

        /// <summary>Writes <paramref name="replacement"/> in place of source chars [start, end); each new char spans all of them.</summary>
        public void Replace(int start, int end, ReadOnlySpan<char> replacement)
        {
            var (s, e) = source.OriginalSpan(start, end);
            if (start == end && start < source.Text.Length) (s, e) = source.OriginalSpan(start, start + 1);
            _text.Append(replacement);
            for (int i = 0; i < replacement.Length; i++)
            {
                _starts.Add(s);
                _ends.Add(e);
            }
        }

        /// <summary>The rebuilt text.</summary>
        public NormalizedText Build() => new(_text.ToString(), 0, [.. _starts], [.. _ends]);
    }
}
