using System.Globalization;
using System.Text;

namespace QLoRA.Text.Templates;

internal enum TokenKind
{
    Text, VariableBegin, VariableEnd, BlockBegin, BlockEnd,
    Name, String, Integer, Float, Operator, End,
}

internal readonly record struct Token(TokenKind Kind, string Value, int Position)
{
    public override string ToString() => Kind is TokenKind.End ? "end of template" : $"'{Value}'";
}

/// <summary>
/// Splits template source into text and tag tokens with jinja2's whitespace rules as transformers configures them:
/// <c>trim_blocks</c> (the newline after a block or comment tag is dropped), <c>lstrip_blocks</c> (spaces and tabs
/// before a block or comment tag at the start of a line are dropped, unless <c>{%+</c>), and <c>-</c> markers that
/// strip all whitespace on their side. <c>{% raw %}</c> sections are passed through as text.
/// </summary>
internal sealed class Lexer(string source, string name, bool trimBlocks = true, bool lstripBlocks = true)
{
    private readonly List<Token> _tokens = [];
    private int _pos;

    public List<Token> Tokenize()
    {
        bool lineStarting = true;
        bool stripNextText = false;   // a preceding "-%}" / "-}}"
        while (_pos < source.Length)
        {
            int tag = FindTagStart(_pos);
            string text = source[_pos..(tag < 0 ? source.Length : tag)];
            if (stripNextText) text = text.TrimStart();
            stripNextText = false;
            if (tag < 0)
            {
                AddText(text, _pos);
                break;
            }
            char kind = source[tag + 1];
            char modifier = tag + 2 < source.Length ? source[tag + 2] : '\0';
            if (modifier == '-') text = text.TrimEnd();
            else if (lstripBlocks && modifier != '+' && kind is '%' or '#') text = LStrip(text, lineStarting);
            AddText(text, _pos);
            int inner = tag + 2 + (modifier is '-' or '+' ? 1 : 0);

            if (kind == '#')
            {
                int end = source.IndexOf("#}", inner, StringComparison.Ordinal);
                if (end < 0) throw Error(tag, "unclosed comment");
                bool strip = source[end - 1] == '-' && end - 1 >= inner;
                _pos = end + 2;
                if (strip) stripNextText = true;
                else if (trimBlocks) SkipNewline();
                lineStarting = _pos == 0 || source[_pos - 1] == '\n';
                continue;
            }

            if (kind == '%' && TryRaw(tag, inner, ref lineStarting)) continue;

            _tokens.Add(new Token(kind == '{' ? TokenKind.VariableBegin : TokenKind.BlockBegin, kind == '{' ? "{{" : "{%", tag));
            _pos = inner;
            bool closed = false;
            while (_pos < source.Length)
            {
                SkipSpace();
                if (_pos >= source.Length) break;
                if (TryClose(kind, out bool stripAfter))
                {
                    closed = true;
                    if (stripAfter) stripNextText = true;
                    else if (kind == '%' && trimBlocks) SkipNewline();
                    break;
                }
                LexExpressionToken();
            }
            if (!closed) throw Error(tag, kind == '{' ? "unclosed '{{'" : "unclosed '{%'");
            lineStarting = source[_pos - 1] == '\n';
        }
        _tokens.Add(new Token(TokenKind.End, "", source.Length));
        return _tokens;
    }

    private int FindTagStart(int from)
    {
        int i = from;
        while (true)
        {
            i = source.IndexOf('{', i);
            if (i < 0 || i + 1 >= source.Length) return -1;
            char c = source[i + 1];
            if (c is '{' or '%' or '#') return i;
            i++;
        }
    }

    private static string LStrip(string text, bool lineStarting)
    {
        int nl = text.LastIndexOf('\n');
        int lineStart = nl + 1;
        if (nl < 0 && !lineStarting) return text;
        for (int i = lineStart; i < text.Length; i++)
            if (text[i] is not (' ' or '\t')) return text;
        return text[..lineStart];
    }

    private void AddText(string text, int position)
    {
        if (text.Length > 0) _tokens.Add(new Token(TokenKind.Text, text, position));
    }

    private void SkipNewline()
    {
        if (_pos < source.Length && source[_pos] == '\n') _pos++;
        else if (_pos + 1 < source.Length && source[_pos] == '\r' && source[_pos + 1] == '\n') _pos += 2;
    }

    private void SkipSpace()
    {
        while (_pos < source.Length && char.IsWhiteSpace(source[_pos])) _pos++;
    }

    private bool TryClose(char kind, out bool strip)
    {
        strip = false;
        string close = kind == '{' ? "}}" : "%}";
        int at = _pos;
        if (source[at] is '-' or '+' && at + 2 < source.Length + 1 && string.CompareOrdinal(source, at + 1, close, 0, 2) == 0)
        {
            strip = source[at] == '-';
            _tokens.Add(new Token(kind == '{' ? TokenKind.VariableEnd : TokenKind.BlockEnd, close, at));
            _pos = at + 3;
            return true;
        }
        if (string.CompareOrdinal(source, at, close, 0, 2) == 0)
        {
            _tokens.Add(new Token(kind == '{' ? TokenKind.VariableEnd : TokenKind.BlockEnd, close, at));
            _pos = at + 2;
            return true;
        }
        return false;
    }

    // {% raw %} … {% endraw %}: everything between is text.
    private bool TryRaw(int tag, int inner, ref bool lineStarting)
    {
        int p = inner;
        while (p < source.Length && char.IsWhiteSpace(source[p])) p++;
        if (string.CompareOrdinal(source, p, "raw", 0, 3) != 0) return false;
        int q = p + 3;
        while (q < source.Length && char.IsWhiteSpace(source[q])) q++;
        bool stripInside = q < source.Length && source[q] == '-';
        if (stripInside) q++;
        if (string.CompareOrdinal(source, q, "%}", 0, 2) != 0) return false;
        int bodyStart = q + 2;
        if (!stripInside && trimBlocks && bodyStart < source.Length && source[bodyStart] == '\n') bodyStart++;
        int search = bodyStart;
        while (true)
        {
            int end = source.IndexOf("{%", search, StringComparison.Ordinal);
            if (end < 0) throw Error(tag, "unclosed '{% raw %}'");
            int r = end + 2;
            bool stripBefore = r < source.Length && source[r] == '-';
            if (stripBefore || (r < source.Length && source[r] == '+')) r++;
            while (r < source.Length && char.IsWhiteSpace(source[r])) r++;
            if (string.CompareOrdinal(source, r, "endraw", 0, 6) != 0) { search = end + 2; continue; }
            r += 6;
            while (r < source.Length && char.IsWhiteSpace(source[r])) r++;
            bool stripAfter = r < source.Length && source[r] == '-';
            if (stripAfter) r++;
            if (string.CompareOrdinal(source, r, "%}", 0, 2) != 0) throw Error(end, "malformed '{% endraw %}'");
            string body = source[bodyStart..end];
            if (stripInside) body = body.TrimStart();
            if (stripBefore) body = body.TrimEnd();
            else if (lstripBlocks) body = LStrip(body, false);
            AddText(body, bodyStart);
            _pos = r + 2;
            if (!stripAfter && trimBlocks) SkipNewline();
            else if (stripAfter) { while (_pos < source.Length && char.IsWhiteSpace(source[_pos])) _pos++; }
            lineStarting = source[_pos - 1] == '\n';
            return true;
        }
    }

    private static readonly string[] Operators =
        ["**", "//", "==", "!=", "<=", ">=", "+", "-", "*", "/", "%", "~", "<", ">", "=", "(", ")", "[", "]", "{", "}", ",", ".", ":", "|"];

    private void LexExpressionToken()
    {
        char c = source[_pos];
        int start = _pos;
        if (char.IsLetter(c) || c == '_')
        {
            while (_pos < source.Length && (char.IsLetterOrDigit(source[_pos]) || source[_pos] == '_')) _pos++;
            _tokens.Add(new Token(TokenKind.Name, source[start.._pos], start));
            return;
        }
        if (char.IsAsciiDigit(c))
        {
            while (_pos < source.Length && (char.IsAsciiDigit(source[_pos]) || source[_pos] == '_')) _pos++;
            bool isFloat = false;
            if (_pos + 1 < source.Length && source[_pos] == '.' && char.IsAsciiDigit(source[_pos + 1]))
            {
                isFloat = true;
                _pos++;
                while (_pos < source.Length && (char.IsAsciiDigit(source[_pos]) || source[_pos] == '_')) _pos++;
            }
            if (_pos < source.Length && source[_pos] is 'e' or 'E')
            {
                int save = _pos;
                _pos++;
                if (_pos < source.Length && source[_pos] is '+' or '-') _pos++;
                if (_pos < source.Length && char.IsAsciiDigit(source[_pos]))
                {
                    isFloat = true;
                    while (_pos < source.Length && char.IsAsciiDigit(source[_pos])) _pos++;
                }
                else _pos = save;
            }
            _tokens.Add(new Token(isFloat ? TokenKind.Float : TokenKind.Integer, source[start.._pos].Replace("_", ""), start));
            return;
        }
        if (c is '"' or '\'')
        {
            _tokens.Add(new Token(TokenKind.String, ReadString(c), start));
            return;
        }
        foreach (var op in Operators)
        {
            if (string.CompareOrdinal(source, _pos, op, 0, op.Length) == 0)
            {
                _pos += op.Length;
                _tokens.Add(new Token(TokenKind.Operator, op, start));
                return;
            }
        }
        throw Error(_pos, $"unexpected character '{c}'");
    }

    private string ReadString(char quote)
    {
        int start = _pos;
        _pos++;
        var sb = new StringBuilder();
        while (_pos < source.Length)
        {
            char c = source[_pos++];
            if (c == quote) return sb.ToString();
            if (c != '\\')
            {
                sb.Append(c);
                continue;
            }
            if (_pos >= source.Length) break;
            char e = source[_pos++];
            switch (e)
            {
                case 'n': sb.Append('\n'); break;
                case 't': sb.Append('\t'); break;
                case 'r': sb.Append('\r'); break;
                case '0': sb.Append('\0'); break;
                case 'b': sb.Append('\b'); break;
                case 'f': sb.Append('\f'); break;
                case 'v': sb.Append('\v'); break;
                case 'a': sb.Append('\a'); break;
                case '\\': sb.Append('\\'); break;
                case '\'': sb.Append('\''); break;
                case '"': sb.Append('"'); break;
                case '\n': break;
                case 'x': sb.Append((char)Hex(2)); break;
                case 'u': sb.Append((char)Hex(4)); break;
                case 'U': sb.Append(char.ConvertFromUtf32(Hex(8))); break;
                default: sb.Append('\\').Append(e); break;   // Python keeps unknown escapes as written
            }
        }
        throw Error(start, "unterminated string literal");
    }

    private int Hex(int digits)
    {
        if (_pos + digits > source.Length || !int.TryParse(source.AsSpan(_pos, digits), NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out int v))
            throw Error(_pos, "bad escape in string literal");
        _pos += digits;
        return v;
    }

    private TemplateSyntaxException Error(int position, string message) => TemplateErrors.Syntax(source, name, position, message);

    public static (int Line, int Column) Position(string source, int position)
    {
        int line = 1, col = 1;
        for (int i = 0; i < position && i < source.Length; i++)
        {
            if (source[i] == '\n') { line++; col = 1; } else col++;
        }
        return (line, col);
    }
}
