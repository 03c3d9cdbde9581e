namespace QLoRA.Text.Templates;

internal sealed partial class Interpreter
{
    public object? Eval(Expr e, Scope scope)
    {
        switch (e)
        {
            case LiteralExpr l:
                return l.Value;
            case NameExpr n:
                return scope.TryGet(n.Name, out var v) ? v : Globals(n.Name) ?? new Undefined(n.Name);
            case ListExpr list:
            {
                var items = list.Items.Select(x => Eval(x, scope)).ToList();
                return list.IsTuple ? new JinjaTuple(items) : items;
            }
            case DictExpr dict:
            {
                var d = new Dictionary<object, object?>();
                foreach (var (k, val) in dict.Items)
                {
                    var key = Eval(k, scope);
                    if (key is null or Undefined or List<object?> or Dictionary<object, object?>)
                        throw Runtime(k.Position, $"unhashable dict key of type '{Py.TypeName(key)}'");
                    d[key] = Eval(val, scope);
                }
                return d;
            }
            case AttrExpr a:
                return GetAttr(Eval(a.Target, scope), a.Name, a.Position, Describe(a.Target));
            case ItemExpr i:
                return GetItem(Eval(i.Target, scope), Eval(i.Index, scope), i.Position, Describe(i.Target));
            case SliceExpr s:
                return Slice(Eval(s.Target, scope), s.Start is null ? null : Eval(s.Start, scope),
                    s.Stop is null ? null : Eval(s.Stop, scope), s.Step is null ? null : Eval(s.Step, scope), s.Position);
            case CallExpr c:
                return EvalCall(c, scope);
            case FilterExpr f:
                return ApplyFilter(f, Eval(f.Value!, scope), scope);
            case TestExpr t:
            {
                var args = t.Args.Select(x => Eval(x, scope)).ToList();
                bool r = ApplyTest(t.Name, Eval(t.Value, scope), args, t.Position);
                return t.Negated ? !r : r;
            }
            case UnaryExpr u:
            {
                var x = Eval(u.Operand, scope);
                switch (u.Op)
                {
                    case "not": return !Py.Truthy(x);
                    case "-":
                        return x switch
                        {
                            long l => (object)(-l),
                            double d => -d,
                            bool b => b ? -1L : 0L,
                            _ => throw Runtime(u.Position, $"bad operand type for unary -: '{Py.TypeName(x)}'"),
                        };
                    default:
                        return Py.IsNumber(x) ? x : throw Runtime(u.Position, $"bad operand type for unary +: '{Py.TypeName(x)}'");
                }
            }
            case BinaryExpr b:
                return EvalBinary(b, scope);
            case CompareExpr c:
            {
                var left = Eval(c.First, scope);
                foreach (var (op, operand) in c.Rest)
                {
                    var right = Eval(operand, scope);
                    if (!CompareOp(op, left, right, c.Position)) return false;
                    left = right;
                }
                return true;
            }
            case CondExpr c:
                return Py.Truthy(Eval(c.Condition, scope)) ? Eval(c.Then, scope)
                    : c.Else is null ? new Undefined("inline if") : Eval(c.Else, scope);
            default:
                throw Runtime(e.Position, $"cannot evaluate {e.GetType().Name}");
        }
    }

    private static string Describe(Expr e) => e switch
    {
        NameExpr n => n.Name,
        AttrExpr a => Describe(a.Target) + "." + a.Name,
        ItemExpr i => Describe(i.Target) + "[…]",
        _ => "value",
    };

    private object? EvalBinary(BinaryExpr b, Scope scope)
    {
        if (b.Op == "and")
        {
            var l = Eval(b.Left, scope);
            return Py.Truthy(l) ? Eval(b.Right, scope) : l;
        }
        if (b.Op == "or")
        {
            var l = Eval(b.Left, scope);
            return Py.Truthy(l) ? l : Eval(b.Right, scope);
        }
        var left = Eval(b.Left, scope);
        var right = Eval(b.Right, scope);
        if (b.Op == "~") return Py.Str(left) + Py.Str(right);
        if (left is Undefined u1) throw Runtime(b.Position, $"'{u1.Name}' is undefined");
        if (right is Undefined u2) throw Runtime(b.Position, $"'{u2.Name}' is undefined");
        switch (b.Op)
        {
            case "+":
                if (left is string ls && right is string rs) return ls + rs;
                if (left is List<object?> ll && right is List<object?> rl)
                {
                    var r = new List<object?>(ll);
                    r.AddRange(rl);
                    return left is JinjaTuple ? new JinjaTuple(r) : r;
                }
                return Arithmetic(b, left, right, (x, y) => checked(x + y), (x, y) => x + y);
            case "-":
                return Arithmetic(b, left, right, (x, y) => checked(x - y), (x, y) => x - y);
            case "*":
                if (left is string s && right is long n) return n <= 0 ? "" : string.Concat(Enumerable.Repeat(s, (int)n));
                if (left is long n2 && right is string s2) return n2 <= 0 ? "" : string.Concat(Enumerable.Repeat(s2, (int)n2));
                if (left is List<object?> list && right is long times)
                    return Enumerable.Range(0, (int)Math.Max(0, times)).SelectMany(_ => list).ToList();
                return Arithmetic(b, left, right, (x, y) => checked(x * y), (x, y) => x * y);
            case "/":
                if (!Py.IsNumber(left) || !Py.IsNumber(right)) throw TypeError(b, left, right);
                if (Py.ToDouble(right) == 0) throw Runtime(b.Position, "division by zero");
                return Py.ToDouble(left) / Py.ToDouble(right);
            case "//":
                if (!Py.IsNumber(left) || !Py.IsNumber(right)) throw TypeError(b, left, right);
                if (Py.ToDouble(right) == 0) throw Runtime(b.Position, "integer division or modulo by zero");
                if (left is double || right is double) return Math.Floor(Py.ToDouble(left) / Py.ToDouble(right));
                return FloorDiv(Py.ToLong(left), Py.ToLong(right));
            case "%":
                if (left is string) throw Unsupported(b.Position, "printf-style string formatting with '%'");
                if (!Py.IsNumber(left) || !Py.IsNumber(right)) throw TypeError(b, left, right);
                if (Py.ToDouble(right) == 0) throw Runtime(b.Position, "integer division or modulo by zero");
                if (left is double || right is double)
                {
                    double x = Py.ToDouble(left), y = Py.ToDouble(right);
                    return x - y * Math.Floor(x / y);
                }
                {
                    long x = Py.ToLong(left), y = Py.ToLong(right);
                    return x - y * FloorDiv(x, y);
                }
            case "**":
                if (!Py.IsNumber(left) || !Py.IsNumber(right)) throw TypeError(b, left, right);
                if (left is double || right is double || Py.ToLong(right) < 0) return Math.Pow(Py.ToDouble(left), Py.ToDouble(right));
                {
                    long r = 1, x = Py.ToLong(left);
                    for (long k = Py.ToLong(right); k > 0; k--) r = checked(r * x);
                    return r;
                }
            default:
                throw Runtime(b.Position, $"unknown operator '{b.Op}'");
        }
    }

    private static long FloorDiv(long x, long y)
    {
        long q = x / y;
        if ((x % y != 0) && ((x < 0) != (y < 0))) q--;
        return q;
    }

    private object? Arithmetic(BinaryExpr b, object? left, object? right, Func<long, long, long> onLong, Func<double, double, double> onDouble)
    {
        if (!Py.IsNumber(left) || !Py.IsNumber(right)) throw TypeError(b, left, right);
        if (left is double || right is double) return onDouble(Py.ToDouble(left), Py.ToDouble(right));
        try
        {
            return onLong(Py.ToLong(left), Py.ToLong(right));
        }
        catch (OverflowException)
        {
            throw Runtime(b.Position, "integer overflow (beyond 64 bits)");
        }
    }

    private TemplateRuntimeException TypeError(BinaryExpr b, object? l, object? r) =>
        Runtime(b.Position, $"unsupported operand type(s) for {b.Op}: '{Py.TypeName(l)}' and '{Py.TypeName(r)}'");

    private bool CompareOp(string op, object? l, object? r, int position)
    {
        switch (op)
        {
            case "==": return Py.Equal(l, r);
            case "!=": return !Py.Equal(l, r);
            case "in": return Contains(r, l, position);
            case "notin": return !Contains(r, l, position);
        }
        int? c = Py.Compare(l, r);
        if (c is null) throw Runtime(position, $"'{op}' not supported between '{Py.TypeName(l)}' and '{Py.TypeName(r)}'");
        return op switch
        {
            "<" => c < 0,
            ">" => c > 0,
            "<=" => c <= 0,
            _ => c >= 0,
        };
    }

    public bool Contains(object? container, object? item, int position) => container switch
    {
        string s => item is string sub ? s.Contains(sub, StringComparison.Ordinal)
            : throw Runtime(position, $"'in <string>' requires string as left operand, not {Py.TypeName(item)}"),
        List<object?> list => list.Exists(x => Py.Equal(x, item)),
        Dictionary<object, object?> d => item is not null && item is not Undefined && d.Keys.Any(k => Py.Equal(k, item)),
        JinjaNamespace ns => item is string n && ns.Attributes.ContainsKey(n),
        Undefined => false,   // jinja2's Undefined iterates as empty
        _ => throw Runtime(position, $"argument of type '{Py.TypeName(container)}' is not iterable"),
    };

    public object? GetAttr(object? target, string attr, int position, string what)
    {
        switch (target)
        {
            case Undefined u:
                throw Runtime(position, $"'{u.Name}' is undefined (reading its attribute '{attr}')");
            case Dictionary<object, object?> d:
                if (DictMethod(d, attr) is { } dm) return dm;
                return d.TryGetValue(attr, out var v) ? v : new Undefined($"{what}.{attr}");
            case string s:
                return (object?)StringMethod(s, attr, position) ?? new Undefined($"{what}.{attr}");
            case List<object?> list:
                return (object?)ListMethod(list, attr) ?? new Undefined($"{what}.{attr}");
            case JinjaNamespace ns:
                return ns.Attributes.TryGetValue(attr, out var nv) ? nv : new Undefined($"{what}.{attr}");
            case LoopContext loop:
                return loop.Get(attr);
            default:
                return new Undefined($"{what}.{attr}");
        }
    }

    public object? GetItem(object? target, object? key, int position, string what)
    {
        switch (target)
        {
            case Undefined u:
                throw Runtime(position, $"'{u.Name}' is undefined (reading an item)");
            case Dictionary<object, object?> d:
                if (key is not null && key is not Undefined)
                {
                    foreach (var (k, v) in d) if (Py.Equal(k, key)) return v;
                }
                return key is string ks ? GetAttr(target, ks, position, what) : new Undefined($"{what}[{Py.Repr(key)}]");
            case List<object?> list when key is long or bool:
            {
                long i = Py.ToLong(key);
                if (i < 0) i += list.Count;
                return i >= 0 && i < list.Count ? list[(int)i] : new Undefined($"{what}[{key}]");
            }
            case string s when key is long or bool:
            {
                var runes = s.EnumerateRunes().ToList();
                long i = Py.ToLong(key);
                if (i < 0) i += runes.Count;
                return i >= 0 && i < runes.Count ? runes[(int)i].ToString() : new Undefined($"{what}[{key}]");
            }
            default:
                return key is string name ? GetAttr(target, name, position, what) : new Undefined($"{what}[{Py.Repr(key)}]");
        }
    }

    private object? Slice(object? target, object? start, object? stop, object? step, int position)
    {
        long? Arg(object? x, string which) => x switch
        {
            null => null,
            long or bool => Py.ToLong(x),
            _ => throw Runtime(position, $"slice {which} must be an integer or None, not {Py.TypeName(x)}"),
        };
        long st = Arg(step, "step") ?? 1;
        if (st == 0) throw Runtime(position, "slice step cannot be zero");
        List<object?> items;
        bool isString = target is string;
        if (target is string s) items = s.EnumerateRunes().Select(r => (object?)r.ToString()).ToList();
        else if (target is List<object?> list) items = list;
        else if (target is Undefined u) throw Runtime(position, $"'{u.Name}' is undefined (slicing it)");
        else throw Runtime(position, $"'{Py.TypeName(target)}' object is not subscriptable");
        int n = items.Count;
        long lo, hi;
        long? a = Arg(start, "start"), b = Arg(stop, "stop");
        if (st > 0)
        {
            lo = a is null ? 0 : a < 0 ? Math.Max(0, a.Value + n) : Math.Min(a.Value, n);
            hi = b is null ? n : b < 0 ? Math.Max(0, b.Value + n) : Math.Min(b.Value, n);
        }
        else
        {
            lo = a is null ? n - 1 : a < 0 ? Math.Max(-1, a.Value + n) : Math.Min(a.Value, n - 1);
            hi = b is null ? -1 : b < 0 ? Math.Max(-1, b.Value + n) : Math.Min(b.Value, n - 1);
        }
        var result = new List<object?>();
        if (st > 0) for (long i = lo; i < hi; i += st) result.Add(items[(int)i]);
        else for (long i = lo; i > hi; i += st) result.Add(items[(int)i]);
        if (isString) return string.Concat(result.Select(x => (string)x!));
        return target is JinjaTuple ? new JinjaTuple(result) : result;
    }

    public (List<object?>, List<(string, object?)>) EvalArguments(List<Expr> args, List<(string Name, Expr Value)> kwargs, Scope scope) =>
        (args.Select(a => Eval(a, scope)).ToList(), kwargs.Select(k => (k.Name, Eval(k.Value, scope))).ToList());

    private object? EvalCall(CallExpr c, Scope scope)
    {
        var fn = Eval(c.Function, scope);
        var (args, kwargs) = EvalArguments(c.Args, c.Kwargs, scope);
        switch (fn)
        {
            case Macro m:
                return m.Invoke(args, kwargs, null);
            case Callable callable:
                try
                {
                    return callable.Invoke(args, kwargs);
                }
                catch (TemplateException)
                {
                    throw;
                }
                catch (RaiseException r)
                {
                    var (line, col) = Lexer.Position(source, c.Position);
                    throw new TemplateRaisedException(name, line, col, r.Message);
                }
                catch (NotSupportedException ns)
                {
                    throw Unsupported(c.Position, ns.Message);
                }
                catch (Exception ex) when (ex is ArgumentException or InvalidCastException or FormatException or IndexOutOfRangeException or OverflowException)
                {
                    throw Runtime(c.Position, $"{callable.Name}(): {ex.Message}", ex);
                }
            case Undefined u:
                throw Runtime(c.Position, $"'{u.Name}' is undefined (called as a function)");
            default:
                throw Runtime(c.Position, $"'{Py.TypeName(fn)}' object is not callable");
        }
    }

    /// <summary>Thrown by <c>raise_exception</c>; turned into <see cref="TemplateRaisedException"/> with the call's position.</summary>
    internal sealed class RaiseException(string message) : Exception(message);
}
