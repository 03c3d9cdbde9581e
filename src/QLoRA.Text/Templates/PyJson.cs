using System.Globalization;
using System.Text;

namespace QLoRA.Text.Templates;

/// <summary>Python's <c>json.dumps</c> as transformers' <c>tojson</c> filter calls it (ensure_ascii=False by default).</summary>
internal static class PyJson
{
    public static string Dumps(object? value, int? indent, bool sortKeys, bool ensureAscii = false)
    {
        var sb = new StringBuilder();
        Write(sb, value, indent, sortKeys, ensureAscii, 0);
        return sb.ToString();
    }

    private static void Write(StringBuilder sb, object? v, int? indent, bool sortKeys, bool ascii, int depth)
    {
        switch (v)
        {
            case null: sb.Append("null"); return;
            case bool b: sb.Append(b ? "true" : "false"); return;
            case long l: sb.Append(l.ToString(CultureInfo.InvariantCulture)); return;
            case double d:
                sb.Append(double.IsNaN(d) ? "NaN" : double.IsPositiveInfinity(d) ? "Infinity" : double.IsNegativeInfinity(d) ? "-Infinity" : Py.FloatRepr(d));
                return;
            case string s: WriteString(sb, s, ascii); return;
            case List<object?> list:
                if (list.Count == 0) { sb.Append("[]"); return; }
                sb.Append('[');
                for (int i = 0; i < list.Count; i++)
                {
                    if (i > 0) sb.Append(indent is null ? ", " : ",");
                    NewLine(sb, indent, depth + 1);
                    Write(sb, list[i], indent, sortKeys, ascii, depth + 1);
                }
                NewLine(sb, indent, depth);
                sb.Append(']');
                return;
            case Dictionary<object, object?> dict:
            {
                if (dict.Count == 0) { sb.Append("{}"); return; }
                var pairs = dict.Select(kv => (Key: KeyText(kv.Key), kv.Value)).ToList();
                if (sortKeys) pairs.Sort((x, y) => string.CompareOrdinal(x.Key, y.Key));
                sb.Append('{');
                for (int i = 0; i < pairs.Count; i++)
                {
                    if (i > 0) sb.Append(indent is null ? ", " : ",");
                    NewLine(sb, indent, depth + 1);
                    WriteString(sb, pairs[i].Key, ascii);
                    sb.Append(": ");
                    Write(sb, pairs[i].Value, indent, sortKeys, ascii, depth + 1);
                }
                NewLine(sb, indent, depth);
                sb.Append('}');
                return;
            }
            case JinjaNamespace:
                throw new ArgumentException("Object of type Namespace is not JSON serializable");
            case Undefined u:
                throw new ArgumentException($"'{u.Name}' is undefined and not JSON serializable");
            default:
                throw new ArgumentException($"Object of type {Py.TypeName(v)} is not JSON serializable");
        }
    }

    private static string KeyText(object k) => k switch
    {
        string s => s,
        bool b => b ? "true" : "false",
        long l => l.ToString(CultureInfo.InvariantCulture),
        double d => Py.FloatRepr(d),
        _ => throw new ArgumentException($"keys must be str, int, float, bool or None, not {Py.TypeName(k)}"),
    };

    private static void NewLine(StringBuilder sb, int? indent, int depth)
    {
        if (indent is not { } n) return;
        sb.Append('\n').Append(' ', n * depth);
    }

    private static void WriteString(StringBuilder sb, string s, bool ascii)
    {
        sb.Append('"');
        foreach (char c in s)
        {
            switch (c)
            {
                case '"': sb.Append("\\\""); break;
                case '\\': sb.Append("\\\\"); break;
                case '\n': sb.Append("\\n"); break;
                case '\r': sb.Append("\\r"); break;
                case '\t': sb.Append("\\t"); break;
                case '\b': sb.Append("\\b"); break;
                case '\f': sb.Append("\\f"); break;
                default:
                    if (c < 0x20 || (ascii && c > 0x7E)) sb.Append($"\\u{(int)c:x4}");
                    else sb.Append(c);
                    break;
            }
        }
        sb.Append('"');
    }
}
