using System.Collections.Generic;
using System.Globalization;
using System.Text;

namespace QLoRA.Generators;

/// <summary>
/// A small JSON reader for weights manifests (netstandard2.0 analyzers cannot bring System.Text.Json along):
/// objects → Dictionary&lt;string, object?&gt;, arrays → List&lt;object?&gt;, numbers → double, strings, bools, null.
/// </summary>
internal static class MiniJson
{
    public static object? Parse(string text)
    {
        int i = 0;
        object? value = Value(text, ref i);
        Skip(text, ref i);
        if (i != text.Length)
        {
            throw new System.FormatException($"unexpected '{text[i]}' at {i}");
        }

        return value;
    }

    private static object? Value(string s, ref int i)
    {
        Skip(s, ref i);
        if (i >= s.Length)
        {
            throw new System.FormatException("unexpected end");
        }

        char c = s[i];
        if (c == '{')
        {
            var obj = new Dictionary<string, object?>();
            i++;
            Skip(s, ref i);
            if (s[i] == '}')
            {
                i++;
                return obj;
            }

            while (true)
            {
                Skip(s, ref i);
                string key = String(s, ref i);
                Skip(s, ref i);
                Expect(s, ref i, ':');
                obj[key] = Value(s, ref i);
                Skip(s, ref i);
                if (s[i] == ',')
                {
                    i++;
                    continue;
                }

                Expect(s, ref i, '}');
                return obj;
            }
        }

        if (c == '[')
        {
            var list = new List<object?>();
            i++;
            Skip(s, ref i);
            if (s[i] == ']')
            {
                i++;
                return list;
            }

            while (true)
            {
                list.Add(Value(s, ref i));
                Skip(s, ref i);
                if (s[i] == ',')
                {
                    i++;
                    continue;
                }

                Expect(s, ref i, ']');
                return list;
            }
        }

        if (c == '"')
        {
            return String(s, ref i);
        }

        if (s.Length - i >= 4 && s.Substring(i, 4) == "true")
        {
            i += 4;
            return true;
        }

        if (s.Length - i >= 5 && s.Substring(i, 5) == "false")
        {
            i += 5;
            return false;
        }

        if (s.Length - i >= 4 && s.Substring(i, 4) == "null")
        {
            i += 4;
            return null;
        }

        int start = i;
        while (i < s.Length && "+-0123456789.eE".IndexOf(s[i]) >= 0)
        {
            i++;
        }

        return double.Parse(s.Substring(start, i - start), NumberStyles.Float, CultureInfo.InvariantCulture);
    }

    private static string String(string s, ref int i)
    {
        Expect(s, ref i, '"');
        var sb = new StringBuilder();
        while (s[i] != '"')
        {
            if (s[i] == '\\')
            {
                i++;
                char e = s[i];
                sb.Append(e switch
                {
                    'n' => '\n',
                    't' => '\t',
                    'r' => '\r',
                    'b' => '\b',
                    'f' => '\f',
                    'u' => (char)int.Parse(s.Substring(i + 1, 4), NumberStyles.HexNumber, CultureInfo.InvariantCulture),
                    _ => e,
                });
                if (e == 'u')
                {
                    i += 4;
                }
            }
            else
            {
                sb.Append(s[i]);
            }

            i++;
        }

        i++;
        return sb.ToString();
    }

    private static void Skip(string s, ref int i)
    {
        while (i < s.Length && char.IsWhiteSpace(s[i]))
        {
            i++;
        }
    }

    private static void Expect(string s, ref int i, char c)
    {
        if (i >= s.Length || s[i] != c)
        {
            throw new System.FormatException($"expected '{c}' at {i}");
        }

        i++;
    }
}
