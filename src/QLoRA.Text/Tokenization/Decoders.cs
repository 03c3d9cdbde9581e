using System.Globalization;
using System.Text;

namespace QLoRA.Text.Tokenization;

/// <summary>A tokenizer.json decoder: turns the token strings of a sequence back into text pieces (the Rust library's <c>decode_chain</c>).</summary>
internal abstract class Decoder
{
    public abstract List<string> DecodeChain(List<string> tokens);
}

internal sealed class SequenceDecoder(IReadOnlyList<Decoder> steps) : Decoder
{
    public override List<string> DecodeChain(List<string> tokens)
    {
        foreach (var step in steps) tokens = step.DecodeChain(tokens);
        return tokens;
    }
}

/// <summary><c>ByteLevel</c>: alphabet chars back to bytes (a token with a char outside the alphabet contributes its own UTF-8), then lossy UTF-8.</summary>
internal sealed class ByteLevelDecoder : Decoder
{
    public override List<string> DecodeChain(List<string> tokens)
    {
        var bytes = new List<byte>();
        foreach (var t in tokens) AppendBytes(t, bytes);
        return [Encoding.UTF8.GetString(System.Runtime.InteropServices.CollectionsMarshal.AsSpan(bytes))];
    }

    /// <summary>The bytes one token stands for.</summary>
    public static void AppendBytes(string token, List<byte> bytes)
    {
        foreach (char c in token)
        {
            if (ByteLevelAlphabet.ByteOf(c) < 0)
            {
                bytes.AddRange(Encoding.UTF8.GetBytes(token));
                return;
            }
        }
        foreach (char c in token) bytes.Add((byte)ByteLevelAlphabet.ByteOf(c));
    }
}

/// <summary><c>Metaspace</c>: the replacement char becomes a space; the first token loses the space the pre-tokenizer prepended.</summary>
internal sealed class MetaspaceDecoder(char replacement, PrependScheme scheme) : Decoder
{
    public override List<string> DecodeChain(List<string> tokens)
    {
        var result = new List<string>(tokens.Count);
        for (int i = 0; i < tokens.Count; i++)
        {
            string t = tokens[i].Replace(replacement, ' ');
            if (i == 0 && scheme != PrependScheme.Never && t.StartsWith(' ')) t = t[1..];
            result.Add(t);
        }
        return result;
    }
}

/// <summary><c>Replace</c>: every match of the pattern in each token becomes <c>content</c>.</summary>
internal sealed class ReplaceDecoder(SplitPattern pattern, string content) : Decoder
{
    public override List<string> DecodeChain(List<string> tokens)
    {
        var result = new List<string>(tokens.Count);
        var matches = new List<(int Start, int End)>();
        foreach (var t in tokens)
        {
            matches.Clear();
            pattern.Matches(t, matches);
            if (matches.Count == 0) { result.Add(t); continue; }
            var sb = new StringBuilder(t.Length);
            int at = 0;
            foreach (var (s, e) in matches)
            {
                sb.Append(t, at, s - at).Append(content);
                at = e;
            }
            sb.Append(t, at, t.Length - at);
            result.Add(sb.ToString());
        }
        return result;
    }
}

/// <summary><c>ByteFallback</c>: runs of <c>&lt;0xXX&gt;</c> tokens become their UTF-8 text, or one U+FFFD per byte when invalid.</summary>
internal sealed class ByteFallbackDecoder : Decoder
{
    public override List<string> DecodeChain(List<string> tokens)
    {
        var result = new List<string>(tokens.Count);
        var pending = new List<byte>();
        foreach (var t in tokens)
        {
            if (TryParseByte(t, out byte b))
            {
                pending.Add(b);
                continue;
            }
            Flush(pending, result);
            result.Add(t);
        }
        Flush(pending, result);
        return result;
    }

    public static bool TryParseByte(string token, out byte value)
    {
        value = 0;
        return token.Length == 6 && token.StartsWith("<0x", StringComparison.Ordinal) && token[5] == '>'
            && byte.TryParse(token.AsSpan(3, 2), NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out value);
    }

    private static readonly UTF8Encoding StrictUtf8 = new(false, true);

    private static void Flush(List<byte> pending, List<string> result)
    {
        if (pending.Count == 0) return;
        try
        {
            result.Add(StrictUtf8.GetString(pending.ToArray()));
        }
        catch (DecoderFallbackException)
        {
            for (int i = 0; i < pending.Count; i++) result.Add("\uFFFD");
        }
        pending.Clear();
    }
}

/// <summary><c>Fuse</c>: all tokens into one string.</summary>
internal sealed class FuseDecoder : Decoder
{
    public override List<string> DecodeChain(List<string> tokens) => [string.Concat(tokens)];
}

/// <summary><c>Strip</c>: removes up to <c>start</c> leading and <c>stop</c> trailing <c>content</c> chars of each token.</summary>
internal sealed class StripDecoder(char content, int start, int stop) : Decoder
{
    public override List<string> DecodeChain(List<string> tokens)
    {
        var result = new List<string>(tokens.Count);
        foreach (var t in tokens)
        {
            int s = 0, e = t.Length;
            while (s < start && s < e && t[s] == content) s++;
            int cut = 0;
            while (cut < stop && e > s && t[e - 1] == content) { e--; cut++; }
            result.Add(t[s..e]);
        }
        return result;
    }
}
