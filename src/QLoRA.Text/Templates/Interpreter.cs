using System.Text;

namespace QLoRA.Text.Templates;

/// <summary>Variables visible at a point of the template; a for loop or macro call opens a child scope.</summary>
internal sealed class Scope(Scope? parent)
{
    private readonly Dictionary<string, object?> _vars = new(StringComparer.Ordinal);

    public Scope? Parent => parent;

    public bool TryGet(string name, out object? value)
    {
        for (var s = this; s is not null; s = s.Parent)
            if (s._vars.TryGetValue(name, out value)) return true;
        value = null;
        return false;
    }

    public void Set(string name, object? value) => _vars[name] = value;
}

/// <summary>A <c>{% macro %}</c>, callable from expressions.</summary>
internal sealed class Macro(MacroNode node, Scope closure, Interpreter interpreter)
{
    public string Name => node.Name;

    public object? Invoke(List<object?> args, List<(string Name, object? Value)> kwargs, Macro? caller)
    {
        var scope = new Scope(closure);
        var extraKw = new Dictionary<object, object?>();
        var ps = node.Parameters;
        for (int i = 0; i < ps.Count; i++)
        {
            var (name, def) = ps[i];
            object? value;
            int kw = kwargs.FindIndex(k => k.Name == name);
            if (i < args.Count) value = args[i];
            else if (kw >= 0) value = kwargs[kw].Value;
            else if (def is not null) value = interpreter.Eval(def, scope);
            else value = new Undefined(name);
            scope.Set(name, value);
        }
        foreach (var (n, v) in kwargs)
            if (!ps.Exists(p => p.Name == n)) extraKw[n] = v;
        scope.Set("varargs", args.Count > ps.Count ? args.GetRange(ps.Count, args.Count - ps.Count) : new List<object?>());
        scope.Set("kwargs", extraKw);
        if (caller is not null) scope.Set("caller", caller);
        var sb = new StringBuilder();
        interpreter.RenderNested(node.Body, scope, sb);
        return sb.ToString();
    }
}

/// <summary>Executes a parsed template with Python/jinja2 semantics.</summary>
internal sealed partial class Interpreter(string source, string name)
{
    private enum Flow { Normal, Break, Continue }

    private StringBuilder _out = new();
    private readonly List<(int Start, int End)> _generationSpans = [];
    private int _loopDepth;

    public string SourceText => source;
    public string Name => name;

    public IReadOnlyList<(int Start, int End)> GenerationSpans => _generationSpans;

    public Func<DateTime> Now { get; init; } = () => DateTime.Now;

    public string Render(List<Node> nodes, Scope scope)
    {
        _out = new StringBuilder();
        _generationSpans.Clear();
        Exec(nodes, scope);
        return _out.ToString();
    }

    /// <summary>Renders into a separate buffer (macro bodies, block sets, filter blocks, caller()).</summary>
    public void RenderNested(List<Node> nodes, Scope scope, StringBuilder target)
    {
        var saved = _out;
        _out = target;
        try
        {
            Exec(nodes, scope);
        }
        finally
        {
            _out = saved;
        }
    }

    private Flow Exec(List<Node> nodes, Scope scope)
    {
        foreach (var node in nodes)
        {
            var flow = Exec(node, scope);
            if (flow != Flow.Normal) return flow;
        }
        return Flow.Normal;
    }

    private Flow Exec(Node node, Scope scope)
    {
        switch (node)
        {
            case TextNode t:
                _out.Append(t.Text);
                return Flow.Normal;
            case OutputNode o:
                _out.Append(Py.Str(Eval(o.Value, scope)));
                return Flow.Normal;
            case IfNode i:
                foreach (var (cond, body) in i.Branches)
                    if (Py.Truthy(Eval(cond, scope))) return Exec(body, scope);
                return i.Else is null ? Flow.Normal : Exec(i.Else, scope);
            case ForNode f:
                return ExecFor(f, scope);
            case SetNode s:
                ExecSet(s, scope);
                return Flow.Normal;
            case SetBlockNode sb:
                scope.Set(sb.Name, RenderFiltered(sb.Body, sb.Filters, scope));
                return Flow.Normal;
            case MacroNode m:
                scope.Set(m.Name, new Macro(m, scope, this));
                return Flow.Normal;
            case CallBlockNode c:
            {
                var callerNode = new MacroNode(c.Position, "caller", c.CallerParameters, c.Body);
                var caller = new Macro(callerNode, scope, this);
                var target = Eval(c.Call.Function, scope);
                if (target is not Macro macro) throw Runtime(c.Position, "'call' needs a macro");
                var (args, kwargs) = EvalArguments(c.Call.Args, c.Call.Kwargs, scope);
                _out.Append(Py.Str(macro.Invoke(args, kwargs, caller)));
                return Flow.Normal;
            }
            case FilterBlockNode fb:
                _out.Append(Py.Str(RenderFiltered(fb.Body, fb.Filters, scope)));
                return Flow.Normal;
            case BreakNode b:
                if (_loopDepth == 0) throw Syntax(b.Position, "'break' outside a loop");
                return Flow.Break;
            case ContinueNode c:
                if (_loopDepth == 0) throw Syntax(c.Position, "'continue' outside a loop");
                return Flow.Continue;
            case GenerationNode g:
            {
                int start = _out.Length;
                var flow = Exec(g.Body, scope);
                _generationSpans.Add((start, _out.Length));
                return flow;
            }
            case DoNode d:
                Eval(d.Value, scope);
                return Flow.Normal;
            default:
                throw Runtime(node.Position, $"cannot execute {node.GetType().Name}");
        }
    }

    /// <summary>A block's output passed through filters (block set, filter tag).</summary>
    private object? RenderFiltered(List<Node> body, List<FilterExpr> filters, Scope scope)
    {
        var buffer = new StringBuilder();
        RenderNested(body, scope, buffer);
        object? value = buffer.ToString();
        foreach (var filter in filters) value = ApplyFilter(filter, value, scope);
        return value;
    }

    private Flow ExecFor(ForNode f, Scope scope)
    {
        var iterable = Eval(f.Iterable, scope);
        var all = Iterate(iterable, f.Iterable.Position);
        var loopScope = new Scope(scope);
        List<object?> items;
        if (f.Filter is null) items = all;
        else
        {
            items = [];
            foreach (var item in all)
            {
                Bind(f.Targets, item, loopScope, f.Position);
                if (Py.Truthy(Eval(f.Filter, loopScope))) items.Add(item);
            }
        }
        if (items.Count == 0)
            return f.Else is null ? Flow.Normal : Exec(f.Else, scope);
        var loop = new LoopContext(items, _loopDepth + 1);
        _loopDepth++;
        try
        {
            for (int i = 0; i < items.Count; i++)
            {
                loop.Index0 = i;
                Bind(f.Targets, items[i], loopScope, f.Position);
                loopScope.Set("loop", loop);
                var flow = Exec(f.Body, loopScope);
                if (flow == Flow.Break) break;
            }
        }
        finally
        {
            _loopDepth--;
        }
        return Flow.Normal;
    }

    private void Bind(List<string> targets, object? item, Scope scope, int position)
    {
        if (targets.Count == 1)
        {
            scope.Set(targets[0], item);
            return;
        }
        var parts = Iterate(item, position);
        if (parts.Count != targets.Count)
            throw Runtime(position, $"cannot unpack {parts.Count} values into {targets.Count} names");
        for (int i = 0; i < targets.Count; i++) scope.Set(targets[i], parts[i]);
    }

    private void ExecSet(SetNode s, Scope scope)
    {
        var value = Eval(s.Value, scope);
        if (s.Attribute is not null)
        {
            if (!scope.TryGet(s.Names[0], out var target) || target is not JinjaNamespace ns)
                throw Runtime(s.Position, $"cannot assign attribute on '{s.Names[0]}': only namespace() objects allow it");
            ns.Attributes[s.Attribute] = value;
            return;
        }
        if (s.Names.Count == 1)
        {
            scope.Set(s.Names[0], value);
            return;
        }
        Bind(s.Names, value, scope, s.Position);
    }

    public List<object?> Iterate(object? value, int position) => value switch
    {
        List<object?> list => list,
        string s => s.EnumerateRunes().Select(r => (object?)r.ToString()).ToList(),
        Dictionary<object, object?> d => d.Keys.Select(k => (object?)k).ToList(),
        Undefined => [],
        JinjaNamespace ns => ns.Attributes.Keys.Select(k => (object?)k).ToList(),
        _ => throw Runtime(position, $"'{Py.TypeName(value)}' object is not iterable"),
    };

    public TemplateRuntimeException Runtime(int position, string message, Exception? inner = null) =>
        TemplateErrors.Runtime(source, name, position, message, inner);

    public TemplateSyntaxException Syntax(int position, string message) => TemplateErrors.Syntax(source, name, position, message);

    public TemplateUnsupportedException Unsupported(int position, string construct) => TemplateErrors.Unsupported(source, name, position, construct);
}
