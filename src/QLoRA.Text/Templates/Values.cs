using System.Globalization;
using System.Text;
using QLoRA.Core.BitsAndBytes;

namespace QLoRA.Text.Templates;

/// <summary>jinja2's default <c>Undefined</c>: prints as "", iterates as empty, is false; using it as a value fails.</summary>
internal sealed class Undefined(string name)
{
    public string Name { get; } = name;
    public override string ToString() => "";
}

/// <summary>The object <c>namespace(...)</c> returns: attributes that <c>{% set ns.x = … %}</c> may change inside loops.</summary>
internal sealed class JinjaNamespace
{
    public Dictionary<string, object?> Attributes { get; } = new(StringComparer.Ordinal);
}

/// <summary>A built-in function or bound method.</summary>
internal sealed class Callable(string name, Func<List<object?>, List<(string Name, object? Value)>, object?> invoke)
{
    public string Name { get; } = name;
    public object? Invoke(List<object?> args, List<(string, object?)> kwargs) => invoke(args, kwargs);
}

/// <summary>A tuple (printed with parentheses); otherwise a list.</summary>
internal sealed class JinjaTuple(IEnumerable<object?> items) : List<object?>(items);

/// <summary>The <c>loop</c> variable of a for loop.</summary>
internal sealed class LoopContext(List<object?> items, int depth)
{
    public int Index0 { get; set; }
    public List<object?> Items { get; } = items;
    public int Depth { get; } = depth;
    public object? LastChanged { get; set; } = new object();

    public object? Get(string name) => name switch
    {
        "index" => (long)(Index0 + 1),
        "index0" => (long)Index0,
        "revindex" => (long)(Items.Count - Index0),
        "revindex0" => (long)(Items.Count - Index0 - 1),
        "first" => Index0 == 0,
        "last" => Index0 == Items.Count - 1,
        "length" => (long)Items.Count,
        "depth" => (long)Depth,
        "depth0" => (long)(Depth - 1),
        "previtem" => Index0 > 0 ? Items[Index0 - 1] : new Undefined("loop.previtem"),
        "nextitem" => Index0 + 1 < Items.Count ? Items[Index0 + 1] : new Undefined("loop.nextitem"),
        "cycle" => new Callable("loop.cycle", (a, _) => a.Count == 0 ? throw new ArgumentException("loop.cycle needs at least one argument") : a[Index0 % a.Count]),
        "changed" => new Callable("loop.changed", (a, _) =>
        {
            object? value = a.Count == 1 ? a[0] : new JinjaTuple(a);
            bool changed = !Py.Equal(value, LastChanged);
            LastChanged = value;
            return changed;
        }),
        _ => new Undefined("loop." + name),
    };
}

/// <summary>Python semantics for the values templates handle: str(), repr(), truthiness, ==, ordering.</summary>
internal static class Py
{
    public static bool Truthy(object? v) => v switch
    {
        null => false,
        Undefined => false,
        bool b => b,
        long l => l != 0,
        double d => d != 0,
        string s => s.Length > 0,
        System.Collections.ICollection c => c.Count > 0,
        _ => true,
    };

    public static string Str(object? v) => v switch
    {
        null => "None",
        Undefined => "",
        string s => s,
        bool b => b ? "True" : "False",
        long l => l.ToString(CultureInfo.InvariantCulture),
        double d => FloatRepr(d),
        _ => Repr(v),
    };

    public static string FloatRepr(double d)
    {
        if (double.IsNaN(d)) return "nan";
        if (double.IsPositiveInfinity(d)) return "inf";
        if (double.IsNegativeInfinity(d)) return "-inf";
        return PythonFloat.Repr(d);
    }

    public static string Repr(object? v)
    {
        switch (v)
        {
            case null: return "None";
            case Undefined: return "";
            case string s: return StringRepr(s);
            case bool or long or double: return Str(v);
            case JinjaTuple t:
                return t.Count == 1 ? $"({Repr(t[0])},)" : "(" + string.Join(", ", t.Select(Repr)) + ")";
            case List<object?> list:
                return "[" + string.Join(", ", list.Select(Repr)) + "]";
            case Dictionary<object, object?> dict:
                return "{" + string.Join(", ", dict.Select(kv => Repr(kv.Key) + ": " + Repr(kv.Value))) + "}";
            case JinjaNamespace: return "<Namespace>";
            case Callable c: return $"<function {c.Name}>";
            case Macro m: return $"<Macro '{m.Name}'>";
            default: return v.ToString() ?? "";
        }
    }

    private static string StringRepr(string s)
    {
        char quote = s.Contains('\'') && !s.Contains('"') ? '"' : '\'';
        var sb = new StringBuilder(s.Length + 2).Append(quote);
        foreach (var rune in s.EnumerateRunes())
        {
            int c = rune.Value;
            if (c == quote || c == '\\') sb.Append('\\').Append((char)c);
            else if (c == '\n') sb.Append("\\n");
            else if (c == '\r') sb.Append("\\r");
            else if (c == '\t') sb.Append("\\t");
            else if (c < 0x20 || c == 0x7F) sb.Append($"\\x{c:x2}");
            else if (!IsPrintable(rune)) sb.Append(c <= 0xFF ? $"\\x{c:x2}" : c <= 0xFFFF ? $"\\u{c:x4}" : $"\\U{c:x8}");
            else sb.Append(rune.ToString());
        }
        return sb.Append(quote).ToString();
    }

    private static bool IsPrintable(Rune r)
    {
        if (r.Value == ' ') return true;
        var cat = Rune.GetUnicodeCategory(r);
        return cat is not (UnicodeCategory.Control or UnicodeCategory.Format or UnicodeCategory.Surrogate
            or UnicodeCategory.PrivateUse or UnicodeCategory.OtherNotAssigned or UnicodeCategory.LineSeparator
            or UnicodeCategory.ParagraphSeparator or UnicodeCategory.SpaceSeparator);
    }

    public static bool IsNumber(object? v) => v is long or double or bool;

    public static double ToDouble(object? v) => v switch
    {
        long l => l,
        double d => d,
        bool b => b ? 1 : 0,
        _ => throw new InvalidCastException(),
    };

    public static bool Equal(object? a, object? b)
    {
        if (a is Undefined || b is Undefined) return a is Undefined && b is Undefined;
        if (a is null || b is null) return a is null && b is null;
        if (IsNumber(a) && IsNumber(b))
        {
            if (a is double || b is double) return ToDouble(a) == ToDouble(b);
            return ToLong(a) == ToLong(b);
        }
        if (a is string sa && b is string sb) return string.Equals(sa, sb, StringComparison.Ordinal);
        if (a is List<object?> la && b is List<object?> lb)
        {
            if ((a is JinjaTuple) != (b is JinjaTuple) || la.Count != lb.Count) return false;
            for (int i = 0; i < la.Count; i++) if (!Equal(la[i], lb[i])) return false;
            return true;
        }
        if (a is Dictionary<object, object?> da && b is Dictionary<object, object?> db)
        {
            if (da.Count != db.Count) return false;
            foreach (var (k, v) in da)
                if (!db.TryGetValue(k, out var w) || !Equal(v, w)) return false;
            return true;
        }
        return ReferenceEquals(a, b);
    }

    public static long ToLong(object? v) => v switch
    {
        long l => l,
        bool b => b ? 1 : 0,
        double d => (long)d,
        _ => throw new InvalidCastException(),
    };

    /// <summary>Python ordering for numbers, strings and lists; null when the types do not order.</summary>
    public static int? Compare(object? a, object? b)
    {
        if (IsNumber(a) && IsNumber(b))
        {
            if (a is double || b is double) return ToDouble(a).CompareTo(ToDouble(b));
            return ToLong(a).CompareTo(ToLong(b));
        }
        if (a is string sa && b is string sb) return Math.Sign(string.CompareOrdinal(sa, sb));
        if (a is List<object?> la && b is List<object?> lb)
        {
            for (int i = 0; i < Math.Min(la.Count, lb.Count); i++)
            {
                if (Equal(la[i], lb[i])) continue;
                return Compare(la[i], lb[i]);
            }
            return la.Count.CompareTo(lb.Count);
        }
        return null;
    }

    public static string TypeName(object? v) => v switch
    {
        null => "NoneType",
        Undefined => "Undefined",
        bool => "bool",
        long => "int",
        double => "float",
        string => "str",
        JinjaTuple => "tuple",
        List<object?> => "list",
        Dictionary<object, object?> => "dict",
        JinjaNamespace => "Namespace",
        _ => "function",
    };

    /// <summary>Normalizes a dictionary key so 1 and 1.0 and True hash alike, as in Python.</summary>
    public static object Key(object? k) => k switch
    {
        null => NoneKey,
        bool b => b ? 1L : 0L,
        double d when d == Math.Floor(d) && Math.Abs(d) < 9e18 => (long)d,
        _ => k!,
    };

    private static readonly object NoneKey = new();
}
