using System.Globalization;
using System.Text;

namespace QLoRA.Text.Templates;

internal sealed partial class Interpreter
{
    public object? ApplyFilter(FilterExpr f, object? value, Scope scope)
    {
        var (args, kwargs) = EvalArguments(f.Args, f.Kwargs, scope);
        try
        {
            return Filter(f.Name, value, args, kwargs, f.Position, scope);
        }
        catch (TemplateException)
        {
            throw;
        }
        catch (NotSupportedException e)
        {
            throw Unsupported(f.Position, e.Message);
        }
        catch (Exception e) when (e is ArgumentException or InvalidCastException or FormatException or OverflowException or IndexOutOfRangeException)
        {
            throw Runtime(f.Position, $"filter '{f.Name}': {e.Message}", e);
        }
    }

    private string Soft(object? v) => Py.Str(v);

    private object? Filter(string name, object? value, List<object?> a, List<(string Name, object? Value)> kw, int pos, Scope scope)
    {
        object? A(int i, string n, object? d = null) => Arg(a, kw, i, n, d);
        switch (name)
        {
            case "safe":
                return value;
            case "string":
                return Soft(value);
            case "trim":
                return PyStrip(Soft(value), A(0, "chars"), true, true);
            case "upper":
                return Soft(value).ToUpperInvariant();
            case "lower":
                return Soft(value).ToLowerInvariant();
            case "capitalize":
                return PyCapitalize(Soft(value));
            case "title":
                return JinjaTitle(Soft(value));
            case "length" or "count":
                return value switch
                {
                    string s => (long)s.EnumerateRunes().Count(),
                    System.Collections.ICollection c => (long)c.Count,
                    Undefined => 0L,
                    JinjaNamespace ns => (long)ns.Attributes.Count,
                    _ => throw new ArgumentException($"object of type '{Py.TypeName(value)}' has no len()"),
                };
            case "default" or "d":
            {
                bool boolean = Py.Truthy(A(1, "boolean", false));
                bool use = value is Undefined || (boolean && !Py.Truthy(value));
                return use ? A(0, "default_value", "") : value;
            }
            case "first":
            {
                var items = Iterate(value, pos);
                return items.Count > 0 ? items[0] : new Undefined("first of an empty sequence");
            }
            case "last":
            {
                var items = Iterate(value, pos);
                return items.Count > 0 ? items[^1] : new Undefined("last of an empty sequence");
            }
            case "list":
                return new List<object?>(Iterate(value, pos));
            case "reverse":
                if (value is string rs) return string.Concat(rs.EnumerateRunes().Reverse().Select(r => r.ToString()));
                return Enumerable.Reverse(Iterate(value, pos)).ToList();
            case "join":
            {
                string sep = Soft(A(0, "d", ""));
                var attr = A(1, "attribute");
                var items = Iterate(value, pos);
                return string.Join(sep, items.Select(x => Soft(attr is null ? x : GetAttrPath(x, attr, pos))));
            }
            case "items":
                if (value is Undefined) return new List<object?>();
                if (value is not Dictionary<object, object?> dict) throw new ArgumentException($"can only get item pairs from a mapping, not {Py.TypeName(value)}");
                return dict.Select(kv => (object?)new JinjaTuple([kv.Key, kv.Value])).ToList();
            case "dictsort":
            {
                if (value is not Dictionary<object, object?> mapping) throw new ArgumentException("dictsort needs a mapping");
                bool byValue = Soft(A(1, "by", "key")) == "value";
                bool reverse = Py.Truthy(A(2, "reverse", false));
                var pairs = mapping.Select(kv => (object?)new JinjaTuple([kv.Key, kv.Value])).ToList();
                pairs.Sort((x, y) => Py.Compare(((JinjaTuple)x!)[byValue ? 1 : 0], ((JinjaTuple)y!)[byValue ? 1 : 0]) ?? 0);
                if (reverse) pairs.Reverse();
                return pairs;
            }
            case "tojson":
            {
                var indent = A(0, "indent");
                bool sortKeys = Py.Truthy(A(3, "sort_keys", false));
                bool ensureAscii = Py.Truthy(A(1, "ensure_ascii", false));
                return PyJson.Dumps(value, indent is null ? null : (int)Py.ToLong(indent), sortKeys, ensureAscii);
            }
            case "replace":
            {
                string s = Soft(value), old = Soft(A(0, "old")), rep = Soft(A(1, "new"));
                var count = A(2, "count");
                return StringMethod(s, "replace", pos)!.Invoke(count is null ? [old, rep] : [old, rep, count], []);
            }
            case "indent":
                return Indent(Soft(value), A(0, "width", 4L), Py.Truthy(A(1, "first", false)), Py.Truthy(A(2, "blank", false)));
            case "int":
                return ToInt(value, A(0, "default", 0L), Py.ToLong(A(1, "base", 10L)));
            case "float":
                return value switch
                {
                    double d => d,
                    long or bool => Py.ToDouble(value),
                    string s when double.TryParse(s.Trim(), NumberStyles.Float, CultureInfo.InvariantCulture, out double d) => d,
                    _ => A(0, "default", 0.0),
                };
            case "abs":
                return value switch
                {
                    long l => (object)Math.Abs(l),
                    double d => Math.Abs(d),
                    _ => throw new ArgumentException($"bad operand type for abs(): '{Py.TypeName(value)}'"),
                };
            case "round":
            {
                double d = Py.ToDouble(value);
                int precision = (int)Py.ToLong(A(0, "precision", 0L));
                string method = Soft(A(1, "method", "common"));
                double scale = Math.Pow(10, precision);
                return method switch
                {
                    "ceil" => Math.Ceiling(d * scale) / scale,
                    "floor" => Math.Floor(d * scale) / scale,
                    _ => PyRound(d, precision),
                };
            }
            case "sum":
            {
                var attr = A(0, "attribute");
                object? total = A(1, "start", 0L);
                foreach (var x in Iterate(value, pos))
                {
                    var v = attr is null ? x : GetAttrPath(x, attr, pos);
                    total = total is double || v is double ? (object)(Py.ToDouble(total) + Py.ToDouble(v)) : Py.ToLong(total) + Py.ToLong(v);
                }
                return total;
            }
            case "min" or "max":
            {
                var items = Iterate(value, pos);
                if (items.Count == 0) return new Undefined($"{name} of an empty sequence");
                var best = items[0];
                foreach (var x in items.Skip(1))
                {
                    int c = Py.Compare(x, best) ?? throw new ArgumentException("values do not order");
                    if (name == "min" ? c < 0 : c > 0) best = x;
                }
                return best;
            }
            case "unique":
            {
                var result = new List<object?>();
                foreach (var x in Iterate(value, pos)) if (!result.Exists(y => Py.Equal(x, y))) result.Add(x);
                return result;
            }
            case "sort":
            {
                bool reverse = Py.Truthy(A(0, "reverse", false));
                var attr = A(2, "attribute");
                var items = new List<object?>(Iterate(value, pos));
                Comparison<object?> cmp = (x, y) =>
                {
                    var kx = attr is null ? x : GetAttrPath(x, attr, pos);
                    var ky = attr is null ? y : GetAttrPath(y, attr, pos);
                    if (kx is string sx && ky is string sy && !Py.Truthy(A(1, "case_sensitive", false)))
                        return string.CompareOrdinal(sx.ToLowerInvariant(), sy.ToLowerInvariant());
                    return Py.Compare(kx, ky) ?? throw new ArgumentException("values do not order");
                };
                var sorted = items.Select((x, i) => (x, i)).ToList();
                sorted.Sort((p, q) => { int c = cmp(p.x, q.x); return c != 0 ? c : p.i.CompareTo(q.i); });
                var result = sorted.Select(p => p.x).ToList();
                if (reverse) result.Reverse();
                return result;
            }
            case "map":
            {
                var items = Iterate(value, pos);
                int attrIndex = kw.FindIndex(k => k.Name == "attribute");
                if (attrIndex >= 0)
                {
                    var attr = kw[attrIndex].Value;
                    int defIndex = kw.FindIndex(k => k.Name == "default");
                    return items.Select(x =>
                    {
                        var v = GetAttrPath(x, attr, pos);
                        return v is Undefined && defIndex >= 0 ? kw[defIndex].Value : v;
                    }).ToList();
                }
                if (a.Count == 0) throw new ArgumentException("map needs a filter name or attribute=");
                string filterName = Soft(a[0]);
                var rest = a.Skip(1).ToList();
                return items.Select(x => Filter(filterName, x, rest, kw, pos, scope)).ToList();
            }
            case "select" or "reject":
            {
                var items = Iterate(value, pos);
                bool keep = name == "select";
                if (a.Count == 0) return items.Where(x => Py.Truthy(x) == keep).ToList();
                string test = Soft(a[0]);
                var rest = a.Skip(1).ToList();
                return items.Where(x => ApplyTest(test, x, rest, pos) == keep).ToList();
            }
            case "selectattr" or "rejectattr":
            {
                var items = Iterate(value, pos);
                bool keep = name == "selectattr";
                if (a.Count == 0) throw new ArgumentException($"{name} needs an attribute name");
                var attr = a[0];
                if (a.Count == 1) return items.Where(x => Py.Truthy(GetAttrPath(x, attr, pos)) == keep).ToList();
                string test = Soft(a[1]);
                var rest = a.Skip(2).ToList();
                return items.Where(x => ApplyTest(test, GetAttrPath(x, attr, pos), rest, pos) == keep).ToList();
            }
            case "batch":
            {
                long size = Py.ToLong(A(0, "linecount"));
                if (size <= 0) throw new ArgumentException("batch size must be positive");
                var items = Iterate(value, pos);
                var result = new List<object?>();
                for (int i = 0; i < items.Count; i += (int)size) result.Add(items.Skip(i).Take((int)size).ToList());
                return result;
            }
            case "wordcount":
                return (long)System.Text.RegularExpressions.Regex.Count(Soft(value), @"\w+");   // jinja2 counts \w+ runs
            case "escape" or "e" or "forceescape":
                return Soft(value).Replace("&", "&amp;").Replace("<", "&lt;").Replace(">", "&gt;").Replace("\"", "&#34;").Replace("'", "&#39;");
            case "center":
            {
                string s = Soft(value);
                int width = (int)Py.ToLong(A(0, "width", 80L));
                if (s.Length >= width) return s;
                int total = width - s.Length, left = total / 2 + (total & width & 1);
                return new string(' ', left) + s + new string(' ', total - left);
            }
            default:
                throw Unsupported(pos, $"filter '{name}'");
        }
    }

    /// <summary>Python's <c>round(x, n)</c>: the exact binary value rounded to n decimals, ties to even.</summary>
    private static double PyRound(double x, int digits)
    {
        if (double.IsNaN(x) || double.IsInfinity(x) || x == 0) return x;
        long bits = BitConverter.DoubleToInt64Bits(x);
        bool negative = bits < 0;
        int exponent = (int)((bits >> 52) & 0x7FF);
        long mantissa = bits & 0xFFFFFFFFFFFFFL;
        if (exponent == 0) exponent++; else mantissa |= 1L << 52;
        exponent -= 1075;                       // x = mantissa · 2^exponent
        var num = new System.Numerics.BigInteger(mantissa);
        var den = System.Numerics.BigInteger.One;
        if (exponent >= 0) num <<= exponent; else den <<= -exponent;
        if (digits >= 0) num *= System.Numerics.BigInteger.Pow(10, digits); else den *= System.Numerics.BigInteger.Pow(10, -digits);
        var q = System.Numerics.BigInteger.DivRem(num, den, out var r);
        int c = (r * 2).CompareTo(den);
        if (c > 0 || (c == 0 && !q.IsEven)) q += 1;
        string text = (negative ? "-" : "") + q.ToString(CultureInfo.InvariantCulture) + "e" + (-digits).ToString(CultureInfo.InvariantCulture);
        return double.Parse(text, NumberStyles.Float, CultureInfo.InvariantCulture);
    }

    private object? GetAttrPath(object? x, object? attr, int pos)
    {
        if (attr is long index) return GetItem(x, index, pos, "item");
        object? v = x;
        foreach (var part in Py.Str(attr).Split('.'))
            v = long.TryParse(part, NumberStyles.None, CultureInfo.InvariantCulture, out long i) ? GetItem(v, i, pos, "item") : GetItem(v, part, pos, "item");
        return v;
    }

    private static string JinjaTitle(string s)
    {
        // jinja2's title: words start after whitespace or one of - ( { [ <; the first letter up, the rest down.
        var sb = new StringBuilder(s.Length);
        bool start = true;
        foreach (char c in s)
        {
            if (char.IsWhiteSpace(c) || c is '-' or '(' or '{' or '[' or '<')
            {
                sb.Append(c);
                start = true;
                continue;
            }
            sb.Append(start ? char.ToUpperInvariant(c) : char.ToLowerInvariant(c));
            start = false;
        }
        return sb.ToString();
    }

    private static string Indent(string s, object? width, bool first, bool blank)
    {
        // jinja2's do_indent, quirks included: a newline is appended before splitting into lines.
        string pad = width is string w ? w : new string(' ', (int)Py.ToLong(width));
        var lines = SplitLines(s + "\n");
        string rv;
        if (blank) rv = string.Join("\n" + pad, lines);
        else
        {
            rv = lines[0];
            if (lines.Count > 1) rv += "\n" + string.Join("\n", lines.Skip(1).Select(l => l.Length > 0 ? pad + l : l));
        }
        return first ? pad + rv : rv;
    }

    /// <summary>Python's <c>str.splitlines()</c>.</summary>
    internal static List<string> SplitLines(string s)
    {
        var lines = new List<string>();
        int start = 0;
        for (int i = 0; i < s.Length; i++)
        {
            char c = s[i];
            if (c is '\n' or '\r' or '\v' or '\f' or '\x1c' or '\x1d' or '\x1e' or '\x85' or '\u2028' or '\u2029')
            {
                lines.Add(s[start..i]);
                if (c == '\r' && i + 1 < s.Length && s[i + 1] == '\n') i++;
                start = i + 1;
            }
        }
        if (start < s.Length) lines.Add(s[start..]);
        return lines;
    }

    private static object? ToInt(object? value, object? fallback, long @base) => value switch
    {
        long l => l,
        bool b => b ? 1L : 0L,
        double d => (long)Math.Truncate(d),
        string s when @base == 10 && long.TryParse(s.Trim().Replace("_", ""), NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out long l) => l,
        string s when @base == 10 && double.TryParse(s.Trim(), NumberStyles.Float, CultureInfo.InvariantCulture, out double d) => (long)Math.Truncate(d),
        string s when @base == 16 && long.TryParse(s.Trim().Replace("0x", ""), NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out long l) => l,
        _ => fallback,
    };

    public bool ApplyTest(string name, object? value, List<object?> a, int pos)
    {
        object? A0() => a.Count > 0 ? a[0] : throw Runtime(pos, $"test '{name}' needs an argument");
        switch (name)
        {
            case "defined": return value is not Undefined;
            case "undefined": return value is Undefined;
            case "none": return value is null;
            case "boolean": return value is bool;
            case "true": return value is true;
            case "false": return value is false;
            case "integer": return value is long;
            case "float": return value is double;
            case "number": return value is long or double or bool;
            case "string": return value is string;
            case "mapping": return value is Dictionary<object, object?>;
            // jinja2's Undefined defines __iter__, __len__ and __getitem__, so it passes both.
            case "iterable": return value is string or List<object?> or Dictionary<object, object?> or Undefined;
            case "sequence": return value is string or List<object?> or Dictionary<object, object?> or Undefined;
            case "callable": return value is Callable or Macro;
            case "sameas": return ReferenceEquals(value, A0()) || (value is null && A0() is null) || (value is bool b1 && A0() is bool b2 && b1 == b2);
            case "eq" or "equalto" or "==": return Py.Equal(value, A0());
            case "ne" or "!=": return !Py.Equal(value, A0());
            case "lt" or "lessthan" or "<": return CompareOp("<", value, A0(), pos);
            case "le" or "<=": return CompareOp("<=", value, A0(), pos);
            case "gt" or "greaterthan" or ">": return CompareOp(">", value, A0(), pos);
            case "ge" or ">=": return CompareOp(">=", value, A0(), pos);
            case "in": return Contains(A0(), value, pos);
            case "odd": return Py.ToLong(value) % 2 != 0;
            case "even": return Py.ToLong(value) % 2 == 0;
            case "divisibleby": return Py.ToLong(value) % Py.ToLong(A0()) == 0;
            case "lower": return value is string ls && ls == ls.ToLowerInvariant();
            case "upper": return value is string us && us == us.ToUpperInvariant();
            case "escaped": return false;
            default: throw Unsupported(pos, $"test '{name}'");
        }
    }
}
