using System.Globalization;
using System.Text;

namespace QLoRA.Text.Templates;

/// <summary>Globals, methods of str/dict/list, jinja2's filters and tests.</summary>
internal sealed partial class Interpreter
{
    private static object? Arg(List<object?> args, List<(string Name, object? Value)> kwargs, int index, string name, object? fallback)
    {
        if (index < args.Count) return args[index];
        foreach (var (n, v) in kwargs) if (n == name) return v;
        return fallback;
    }

    private object? Globals(string n) => n switch
    {
        "raise_exception" => new Callable(n, (a, _) => throw new RaiseException(a.Count > 0 ? Py.Str(a[0]) : "")),
        "strftime_now" => new Callable(n, (a, _) => PythonStrftime.Format(Now(), a.Count > 0 ? Py.Str(a[0]) : throw new ArgumentException("needs a format"))),
        "range" => new Callable(n, (a, _) =>
        {
            long start = 0, stop, step = 1;
            if (a.Count == 1) stop = Py.ToLong(a[0]);
            else if (a.Count >= 2) { start = Py.ToLong(a[0]); stop = Py.ToLong(a[1]); if (a.Count > 2) step = Py.ToLong(a[2]); }
            else throw new ArgumentException("range expected at least 1 argument");
            if (step == 0) throw new ArgumentException("range() arg 3 must not be zero");
            var r = new List<object?>();
            for (long i = start; step > 0 ? i < stop : i > stop; i += step)
            {
                r.Add(i);
                if (r.Count > 1_000_000) throw new ArgumentException("range too large");
            }
            return r;
        }),
        "namespace" => new Callable(n, (a, kw) =>
        {
            var ns = new JinjaNamespace();
            foreach (var x in a)
                if (x is Dictionary<object, object?> d) foreach (var (k, v) in d) ns.Attributes[Py.Str(k)] = v;
            foreach (var (k, v) in kw) ns.Attributes[k] = v;
            return ns;
        }),
        "dict" => new Callable(n, (a, kw) =>
        {
            var d = new Dictionary<object, object?>();
            foreach (var x in a)
                if (x is Dictionary<object, object?> src) foreach (var (k, v) in src) d[k] = v;
            foreach (var (k, v) in kw) d[k] = v;
            return d;
        }),
        _ => null,
    };

    private static Callable? DictMethod(Dictionary<object, object?> d, string name) => name switch
    {
        "items" => new Callable("dict.items", (_, _) => d.Select(kv => (object?)new JinjaTuple([kv.Key, kv.Value])).ToList()),
        "keys" => new Callable("dict.keys", (_, _) => d.Keys.Select(k => (object?)k).ToList()),
        "values" => new Callable("dict.values", (_, _) => d.Values.ToList()),
        "get" => new Callable("dict.get", (a, kw) =>
        {
            var key = Arg(a, kw, 0, "key", null);
            foreach (var (k, v) in d) if (Py.Equal(k, key)) return v;
            return Arg(a, kw, 1, "default", null);
        }),
        _ => null,
    };

    private static Callable? ListMethod(List<object?> list, string name) => name switch
    {
        "count" => new Callable("list.count", (a, _) => (long)list.Count(x => Py.Equal(x, a[0]))),
        "index" => new Callable("list.index", (a, _) =>
        {
            int i = list.FindIndex(x => Py.Equal(x, a[0]));
            return i >= 0 ? (long)i : throw new ArgumentException($"{Py.Repr(a[0])} is not in list");
        }),
        "append" or "extend" or "pop" or "insert" or "remove" or "clear" or "sort" or "reverse" =>
            new Callable("list." + name, (_, _) => throw new ArgumentException($"list.{name} modifies the list, which the sandbox forbids")),
        _ => null,
    };

    private static bool IsPySpace(char c) => char.IsWhiteSpace(c) || c is '\x1c' or '\x1d' or '\x1e' or '\x1f';

    private static string PyStrip(string s, object? chars, bool left, bool right)
    {
        int a = 0, b = s.Length;
        if (chars is string set)
        {
            if (left) while (a < b && set.Contains(s[a])) a++;
            if (right) while (b > a && set.Contains(s[b - 1])) b--;
        }
        else
        {
            if (left) while (a < b && IsPySpace(s[a])) a++;
            if (right) while (b > a && IsPySpace(s[b - 1])) b--;
        }
        return s[a..b];
    }

    private static List<object?> PySplit(string s, object? sep, long maxSplit)
    {
        var result = new List<object?>();
        if (sep is null or Undefined)
        {
            int i = 0;
            while (i < s.Length)
            {
                while (i < s.Length && IsPySpace(s[i])) i++;
                if (i >= s.Length) break;
                if (maxSplit >= 0 && result.Count == maxSplit)
                {
                    result.Add(s[i..].TrimEnd());
                    return result;
                }
                int j = i;
                while (j < s.Length && !IsPySpace(s[j])) j++;
                result.Add(s[i..j]);
                i = j;
            }
            return result;
        }
        string separator = Py.Str(sep);
        if (separator.Length == 0) throw new ArgumentException("empty separator");
        int at = 0;
        while (maxSplit < 0 || result.Count < maxSplit)
        {
            int k = s.IndexOf(separator, at, StringComparison.Ordinal);
            if (k < 0) break;
            result.Add(s[at..k]);
            at = k + separator.Length;
        }
        result.Add(s[at..]);
        return result;
    }

    private static string PyTitle(string s)
    {
        var sb = new StringBuilder(s.Length);
        bool previousCased = false;
        foreach (char c in s)
        {
            sb.Append(previousCased ? char.ToLowerInvariant(c) : char.ToUpperInvariant(c));
            previousCased = char.IsLetter(c) && (char.IsUpper(c) || char.IsLower(c) || char.ToUpperInvariant(c) != char.ToLowerInvariant(c));
        }
        return sb.ToString();
    }

    private static string PyCapitalize(string s) =>
        s.Length == 0 ? s : char.ToUpperInvariant(s[0]) + s[1..].ToLowerInvariant();

    private static bool StartsOrEnds(string s, object? arg, bool start)
    {
        IEnumerable<object?> options = arg is List<object?> list ? list : [arg];
        foreach (var o in options)
        {
            if (o is not string p) throw new ArgumentException($"{(start ? "startswith" : "endswith")} first arg must be str or a tuple of str, not {Py.TypeName(o)}");
            if (start ? s.StartsWith(p, StringComparison.Ordinal) : s.EndsWith(p, StringComparison.Ordinal)) return true;
        }
        return false;
    }

    private Callable? StringMethod(string s, string name, int position) => name switch
    {
        "strip" => new Callable("str.strip", (a, _) => PyStrip(s, a.Count > 0 ? a[0] : null, true, true)),
        "lstrip" => new Callable("str.lstrip", (a, _) => PyStrip(s, a.Count > 0 ? a[0] : null, true, false)),
        "rstrip" => new Callable("str.rstrip", (a, _) => PyStrip(s, a.Count > 0 ? a[0] : null, false, true)),
        "split" => new Callable("str.split", (a, kw) => PySplit(s, Arg(a, kw, 0, "sep", null), Py.ToLong(Arg(a, kw, 1, "maxsplit", -1L)))),
        "rsplit" => new Callable("str.rsplit", (a, kw) =>
        {
            var sep = Arg(a, kw, 0, "sep", null);
            long max = Py.ToLong(Arg(a, kw, 1, "maxsplit", -1L));
            if (max < 0) return PySplit(s, sep, -1);
            if (sep is null) throw new NotSupportedException("str.rsplit with maxsplit and no separator");
            string separator = Py.Str(sep);
            var parts = new List<object?>();
            int end = s.Length;
            while (parts.Count < max)
            {
                int k = s.LastIndexOf(separator, Math.Max(0, end - 1), StringComparison.Ordinal);
                if (k < 0 || k + separator.Length > end) break;
                parts.Insert(0, s[(k + separator.Length)..end]);
                end = k;
            }
            parts.Insert(0, s[..end]);
            return parts;
        }),
        "splitlines" => new Callable("str.splitlines", (_, _) => SplitLines(s).Select(x => (object?)x).ToList()),
        "startswith" => new Callable("str.startswith", (a, _) => StartsOrEnds(s, a[0], true)),
        "endswith" => new Callable("str.endswith", (a, _) => StartsOrEnds(s, a[0], false)),
        "upper" => new Callable("str.upper", (_, _) => s.ToUpperInvariant()),
        "lower" => new Callable("str.lower", (_, _) => s.ToLowerInvariant()),
        "title" => new Callable("str.title", (_, _) => PyTitle(s)),
        "capitalize" => new Callable("str.capitalize", (_, _) => PyCapitalize(s)),
        "replace" => new Callable("str.replace", (a, _) =>
        {
            string old = Py.Str(a[0]), rep = Py.Str(a[1]);
            long count = a.Count > 2 ? Py.ToLong(a[2]) : -1;
            if (count < 0) return old.Length == 0 ? InsertEverywhere(s, rep) : s.Replace(old, rep, StringComparison.Ordinal);
            var sb = new StringBuilder();
            int at = 0;
            for (long n = 0; n < count; n++)
            {
                int k = s.IndexOf(old, at, StringComparison.Ordinal);
                if (k < 0) break;
                sb.Append(s, at, k - at).Append(rep);
                at = k + old.Length;
            }
            return sb.Append(s, at, s.Length - at).ToString();
        }),
        "find" => new Callable("str.find", (a, _) => (long)s.IndexOf(Py.Str(a[0]), StringComparison.Ordinal)),
        "rfind" => new Callable("str.rfind", (a, _) => (long)s.LastIndexOf(Py.Str(a[0]), StringComparison.Ordinal)),
        "count" => new Callable("str.count", (a, _) =>
        {
            string sub = Py.Str(a[0]);
            if (sub.Length == 0) return (long)(s.Length + 1);
            long n = 0;
            for (int at = s.IndexOf(sub, StringComparison.Ordinal); at >= 0; at = s.IndexOf(sub, at + sub.Length, StringComparison.Ordinal)) n++;
            return n;
        }),
        "join" => new Callable("str.join", (a, _) => string.Join(s, Iterate(a[0], position).Select(x => x is string str ? str
            : throw new ArgumentException($"sequence item: expected str instance, {Py.TypeName(x)} found")))),
        "format" => new Callable("str.format", (a, kw) => PyFormat(s, a, kw)),
        "removeprefix" => new Callable("str.removeprefix", (a, _) => s.StartsWith(Py.Str(a[0]), StringComparison.Ordinal) ? s[Py.Str(a[0]).Length..] : s),
        "removesuffix" => new Callable("str.removesuffix", (a, _) => Py.Str(a[0]) is { Length: > 0 } suf && s.EndsWith(suf, StringComparison.Ordinal) ? s[..^suf.Length] : s),
        "isdigit" => new Callable("str.isdigit", (_, _) => s.Length > 0 && s.All(char.IsDigit)),
        "isalpha" => new Callable("str.isalpha", (_, _) => s.Length > 0 && s.All(char.IsLetter)),
        "isalnum" => new Callable("str.isalnum", (_, _) => s.Length > 0 && s.All(char.IsLetterOrDigit)),
        "isspace" => new Callable("str.isspace", (_, _) => s.Length > 0 && s.All(IsPySpace)),
        "islower" => new Callable("str.islower", (_, _) => s.Any(char.IsLower) && !s.Any(char.IsUpper)),
        "isupper" => new Callable("str.isupper", (_, _) => s.Any(char.IsUpper) && !s.Any(char.IsLower)),
        _ => null,
    };

    private static string InsertEverywhere(string s, string rep)
    {
        var sb = new StringBuilder(rep);
        foreach (char c in s) sb.Append(c).Append(rep);
        return sb.ToString();
    }

    private static string PyFormat(string format, List<object?> args, List<(string Name, object? Value)> kwargs)
    {
        var sb = new StringBuilder();
        int auto = 0;
        for (int i = 0; i < format.Length; i++)
        {
            char c = format[i];
            if (c == '{' && i + 1 < format.Length && format[i + 1] == '{') { sb.Append('{'); i++; continue; }
            if (c == '}' && i + 1 < format.Length && format[i + 1] == '}') { sb.Append('}'); i++; continue; }
            if (c != '{') { sb.Append(c); continue; }
            int end = format.IndexOf('}', i);
            if (end < 0) throw new ArgumentException("single '{' encountered in format string");
            string field = format[(i + 1)..end];
            if (field.Contains(':') || field.Contains('!')) throw new NotSupportedException("format specs in str.format");
            object? value;
            if (field.Length == 0) value = args[auto++];
            else if (int.TryParse(field, NumberStyles.None, CultureInfo.InvariantCulture, out int k)) value = args[k];
            else
            {
                int kwi = kwargs.FindIndex(x => x.Name == field);
                value = kwi >= 0 ? kwargs[kwi].Value : throw new ArgumentException($"missing format argument '{field}'");
            }
            sb.Append(Py.Str(value));
            i = end;
        }
        return sb.ToString();
    }
}
