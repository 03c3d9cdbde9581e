using System.Globalization;

namespace QLoRA.Text.Templates;

/// <summary>Recursive-descent parser for the Jinja subset chat templates use, with jinja2's operator precedence.</summary>
internal sealed class Parser
{
    private readonly List<Token> _tokens;
    private readonly string _source;
    private readonly string _name;
    private int _i;

    private static readonly HashSet<string> UnsupportedTags =
        ["include", "import", "from", "extends", "block", "with", "autoescape", "trans", "pluralize"];

    public Parser(string source, string name)
    {
        _source = source;
        _name = name;
        _tokens = new Lexer(source, name).Tokenize();
    }

    public List<Node> ParseTemplate()
    {
        var body = ParseBody(out string? end);
        if (end is not null) throw Syntax(Current.Position, $"unexpected '{{% {end} %}}'");
        return body;
    }

    private Token Current => _tokens[_i];

    private Token Next() => _tokens[_i++];

    private TemplateSyntaxException Syntax(int position, string message) => TemplateErrors.Syntax(_source, _name, position, message);

    private TemplateUnsupportedException Unsupported(int position, string construct) => TemplateErrors.Unsupported(_source, _name, position, construct);

    private bool IsOp(string op) => Current.Kind == TokenKind.Operator && Current.Value == op;

    private bool IsName(string name) => Current.Kind == TokenKind.Name && Current.Value == name;

    private Token ExpectOp(string op)
    {
        if (!IsOp(op)) throw Syntax(Current.Position, $"expected '{op}', found {Current}");
        return Next();
    }

    private string ExpectName()
    {
        if (Current.Kind != TokenKind.Name) throw Syntax(Current.Position, $"expected a name, found {Current}");
        return Next().Value;
    }

    private void ExpectBlockEnd()
    {
        if (Current.Kind != TokenKind.BlockEnd) throw Syntax(Current.Position, $"expected '%}}', found {Current}");
        Next();
    }

    /// <summary>Parses nodes until an end tag; <paramref name="endTag"/> is the tag that stopped it (its '%}' not yet consumed), or null at the end.</summary>
    private List<Node> ParseBody(out string? endTag, params string[] ends)
    {
        var nodes = new List<Node>();
        while (true)
        {
            var t = Current;
            switch (t.Kind)
            {
                case TokenKind.End:
                    endTag = null;
                    if (ends.Length > 0) throw Syntax(t.Position, $"unexpected end of template; expected '{{% {string.Join("' or '{% ", ends)} %}}'");
                    return nodes;
                case TokenKind.Text:
                    Next();
                    nodes.Add(new TextNode(t.Position, t.Value));
                    break;
                case TokenKind.VariableBegin:
                    Next();
                    var e = ParseExpression();
                    if (Current.Kind != TokenKind.VariableEnd) throw Syntax(Current.Position, $"expected '}}}}', found {Current}");
                    Next();
                    nodes.Add(new OutputNode(t.Position, e));
                    break;
                case TokenKind.BlockBegin:
                {
                    Next();
                    var tagToken = Current;
                    string tag = ExpectName();
                    if (Array.IndexOf(ends, tag) >= 0)
                    {
                        endTag = tag;
                        return nodes;
                    }
                    nodes.Add(ParseStatement(tag, tagToken.Position));
                    break;
                }
                default:
                    throw Syntax(t.Position, $"unexpected {t}");
            }
        }
    }

    private Node ParseStatement(string tag, int pos)
    {
        switch (tag)
        {
            case "if": return ParseIf(pos);
            case "for": return ParseFor(pos);
            case "set": return ParseSet(pos);
            case "macro": return ParseMacro(pos);
            case "call": return ParseCallBlock(pos);
            case "filter": return ParseFilterBlock(pos);
            case "generation":
            {
                ExpectBlockEnd();
                var body = ParseBody(out _, "endgeneration");
                ExpectBlockEnd();
                return new GenerationNode(pos, body);
            }
            case "break": ExpectBlockEnd(); return new BreakNode(pos);
            case "continue": ExpectBlockEnd(); return new ContinueNode(pos);
            case "do":
            {
                var e = ParseExpression();
                ExpectBlockEnd();
                return new DoNode(pos, e);
            }
            default:
                if (UnsupportedTags.Contains(tag)) throw Unsupported(pos, $"tag '{tag}'");
                if (tag.StartsWith("end", StringComparison.Ordinal) || tag is "else" or "elif")
                    throw Syntax(pos, $"unexpected '{{% {tag} %}}' with no open block to close");
                throw Syntax(pos, $"unknown tag '{tag}'");
        }
    }

    private IfNode ParseIf(int pos)
    {
        var branches = new List<(Expr, List<Node>)>();
        List<Node>? elseBody = null;
        var cond = ParseExpression();
        ExpectBlockEnd();
        while (true)
        {
            var body = ParseBody(out string? end, "elif", "else", "endif");
            branches.Add((cond, body));
            if (end == "elif")
            {
                cond = ParseExpression();
                ExpectBlockEnd();
                continue;
            }
            if (end == "else")
            {
                ExpectBlockEnd();
                elseBody = ParseBody(out _, "endif");
            }
            ExpectBlockEnd();
            return new IfNode(pos, branches, elseBody);
        }
    }

    private ForNode ParseFor(int pos)
    {
        var targets = new List<string> { ExpectName() };
        while (IsOp(","))
        {
            Next();
            targets.Add(ExpectName());
        }
        if (!IsName("in")) throw Syntax(Current.Position, $"expected 'in', found {Current}");
        Next();
        var iterable = ParseExpression(allowCondExpr: false);
        Expr? filter = null;
        bool recursive = false;
        if (IsName("if"))
        {
            Next();
            filter = ParseExpression(allowCondExpr: false);
        }
        if (IsName("recursive"))
        {
            throw Unsupported(Current.Position, "recursive for loop");
        }
        ExpectBlockEnd();
        var body = ParseBody(out string? end, "else", "endfor");
        List<Node>? elseBody = null;
        if (end == "else")
        {
            ExpectBlockEnd();
            elseBody = ParseBody(out _, "endfor");
        }
        ExpectBlockEnd();
        return new ForNode(pos, targets, iterable, filter, body, elseBody, recursive);
    }

    private Node ParseSet(int pos)
    {
        string first = ExpectName();
        if (IsOp("."))
        {
            Next();
            string attr = ExpectName();
            ExpectOp("=");
            var v = ParseTupleOrExpression();
            ExpectBlockEnd();
            return new SetNode(pos, [first], attr, v);
        }
        var names = new List<string> { first };
        while (IsOp(","))
        {
            Next();
            names.Add(ExpectName());
        }
        if (IsOp("="))
        {
            Next();
            var v = ParseTupleOrExpression();
            ExpectBlockEnd();
            return new SetNode(pos, names, null, v);
        }
        if (names.Count != 1) throw Syntax(Current.Position, "a block set assigns one name");
        var filters = new List<FilterExpr>();
        while (IsOp("|"))
        {
            Next();
            filters.Add(ParseFilterCall(null));
        }
        ExpectBlockEnd();
        var body = ParseBody(out _, "endset");
        ExpectBlockEnd();
        return new SetBlockNode(pos, first, filters, body);
    }

    private List<(string, Expr?)> ParseParameters()
    {
        var ps = new List<(string, Expr?)>();
        ExpectOp("(");
        while (!IsOp(")"))
        {
            string n = ExpectName();
            Expr? d = null;
            if (IsOp("="))
            {
                Next();
                d = ParseExpression();
            }
            ps.Add((n, d));
            if (!IsOp(",")) break;
            Next();
        }
        ExpectOp(")");
        return ps;
    }

    private MacroNode ParseMacro(int pos)
    {
        string name = ExpectName();
        var ps = ParseParameters();
        ExpectBlockEnd();
        var body = ParseBody(out _, "endmacro");
        ExpectBlockEnd();
        return new MacroNode(pos, name, ps, body);
    }

    private CallBlockNode ParseCallBlock(int pos)
    {
        var callerParams = IsOp("(") ? ParseParameters() : [];
        var e = ParseExpression();
        if (e is not CallExpr call) throw Syntax(pos, "'call' needs a macro call");
        ExpectBlockEnd();
        var body = ParseBody(out _, "endcall");
        ExpectBlockEnd();
        return new CallBlockNode(pos, call, callerParams, body);
    }

    private FilterBlockNode ParseFilterBlock(int pos)
    {
        var filters = new List<FilterExpr> { ParseFilterCall(null) };
        while (IsOp("|"))
        {
            Next();
            filters.Add(ParseFilterCall(null));
        }
        ExpectBlockEnd();
        var body = ParseBody(out _, "endfilter");
        ExpectBlockEnd();
        return new FilterBlockNode(pos, filters, body);
    }

    // ---- expressions (jinja2 precedence: cond < or < and < not < compare < +,- < ~ < *,/,//,% < ** < unary, postfix, filters/tests)

    private Expr ParseTupleOrExpression()
    {
        int pos = Current.Position;
        var first = ParseExpression();
        if (!IsOp(",")) return first;
        var items = new List<Expr> { first };
        while (IsOp(","))
        {
            Next();
            if (Current.Kind is TokenKind.BlockEnd or TokenKind.VariableEnd) break;
            items.Add(ParseExpression());
        }
        return new ListExpr(pos, items, IsTuple: true);
    }

    public Expr ParseExpression(bool allowCondExpr = true)
    {
        var e = ParseOr();
        if (!allowCondExpr) return e;
        while (IsName("if"))
        {
            int pos = Next().Position;
            var cond = ParseOr();
            Expr? otherwise = null;
            if (IsName("else"))
            {
                Next();
                otherwise = ParseExpression();
            }
            e = new CondExpr(pos, cond, e, otherwise);
        }
        return e;
    }

    private Expr ParseOr()
    {
        var e = ParseAnd();
        while (IsName("or"))
        {
            int pos = Next().Position;
            e = new BinaryExpr(pos, "or", e, ParseAnd());
        }
        return e;
    }

    private Expr ParseAnd()
    {
        var e = ParseNot();
        while (IsName("and"))
        {
            int pos = Next().Position;
            e = new BinaryExpr(pos, "and", e, ParseNot());
        }
        return e;
    }

    private Expr ParseNot()
    {
        if (IsName("not"))
        {
            int pos = Next().Position;
            return new UnaryExpr(pos, "not", ParseNot());
        }
        return ParseCompare();
    }

    private Expr ParseCompare()
    {
        int pos = Current.Position;
        var first = ParseMath1();
        var rest = new List<(string, Expr)>();
        while (true)
        {
            if (Current.Kind == TokenKind.Operator && Current.Value is "==" or "!=" or "<" or ">" or "<=" or ">=")
            {
                string op = Next().Value;
                rest.Add((op, ParseMath1()));
            }
            else if (IsName("in"))
            {
                Next();
                rest.Add(("in", ParseMath1()));
            }
            else if (IsName("not") && _tokens[_i + 1].Kind == TokenKind.Name && _tokens[_i + 1].Value == "in")
            {
                Next();
                Next();
                rest.Add(("notin", ParseMath1()));
            }
            else break;
        }
        return rest.Count == 0 ? first : new CompareExpr(pos, first, rest);
    }

    private Expr ParseMath1()
    {
        var e = ParseConcat();
        while (Current.Kind == TokenKind.Operator && Current.Value is "+" or "-")
        {
            var t = Next();
            e = new BinaryExpr(t.Position, t.Value, e, ParseConcat());
        }
        return e;
    }

    private Expr ParseConcat()
    {
        var e = ParseMath2();
        while (IsOp("~"))
        {
            int pos = Next().Position;
            e = new BinaryExpr(pos, "~", e, ParseMath2());
        }
        return e;
    }

    private Expr ParseMath2()
    {
        var e = ParsePow();
        while (Current.Kind == TokenKind.Operator && Current.Value is "*" or "/" or "//" or "%")
        {
            var t = Next();
            e = new BinaryExpr(t.Position, t.Value, e, ParsePow());
        }
        return e;
    }

    private Expr ParsePow()
    {
        var e = ParseUnary(true);
        while (IsOp("**"))
        {
            int pos = Next().Position;
            e = new BinaryExpr(pos, "**", e, ParseUnary(true));
        }
        return e;
    }

    private Expr ParseUnary(bool withFilter)
    {
        Expr e;
        if (IsOp("-") || IsOp("+"))
        {
            var t = Next();
            e = new UnaryExpr(t.Position, t.Value, ParseUnary(false));
        }
        else
        {
            e = ParsePrimary();
        }
        e = ParsePostfix(e);
        if (withFilter) e = ParseFilterAndTests(e);
        return e;
    }

    private Expr ParsePrimary()
    {
        var t = Current;
        switch (t.Kind)
        {
            case TokenKind.Name:
                Next();
                return t.Value switch
                {
                    "true" or "True" => new LiteralExpr(t.Position, true),
                    "false" or "False" => new LiteralExpr(t.Position, false),
                    "none" or "None" => new LiteralExpr(t.Position, null),
                    _ => new NameExpr(t.Position, t.Value),
                };
            case TokenKind.String:
            {
                Next();
                string s = t.Value;
                while (Current.Kind == TokenKind.String) s += Next().Value;   // adjacent literals concatenate
                return new LiteralExpr(t.Position, s);
            }
            case TokenKind.Integer:
                Next();
                return new LiteralExpr(t.Position, long.TryParse(t.Value, NumberStyles.None, CultureInfo.InvariantCulture, out long l) ? l
                    : throw Syntax(t.Position, $"integer literal {t.Value} is out of range"));
            case TokenKind.Float:
                Next();
                return new LiteralExpr(t.Position, double.Parse(t.Value, CultureInfo.InvariantCulture));
            case TokenKind.Operator when t.Value == "(":
            {
                Next();
                if (IsOp(")"))
                {
                    Next();
                    return new ListExpr(t.Position, [], IsTuple: true);
                }
                var first = ParseExpression();
                if (IsOp(")"))
                {
                    Next();
                    return first;
                }
                var items = new List<Expr> { first };
                while (IsOp(","))
                {
                    Next();
                    if (IsOp(")")) break;
                    items.Add(ParseExpression());
                }
                ExpectOp(")");
                return new ListExpr(t.Position, items, IsTuple: true);
            }
            case TokenKind.Operator when t.Value == "[":
            {
                Next();
                var items = new List<Expr>();
                while (!IsOp("]"))
                {
                    items.Add(ParseExpression());
                    if (!IsOp(",")) break;
                    Next();
                }
                ExpectOp("]");
                return new ListExpr(t.Position, items, IsTuple: false);
            }
            case TokenKind.Operator when t.Value == "{":
            {
                Next();
                var items = new List<(Expr, Expr)>();
                while (!IsOp("}"))
                {
                    var k = ParseExpression();
                    ExpectOp(":");
                    var v = ParseExpression();
                    items.Add((k, v));
                    if (!IsOp(",")) break;
                    Next();
                }
                ExpectOp("}");
                return new DictExpr(t.Position, items);
            }
            default:
                throw Syntax(t.Position, $"unexpected {t}");
        }
    }

    private Expr ParsePostfix(Expr e)
    {
        while (true)
        {
            if (IsOp("."))
            {
                int pos = Next().Position;
                if (Current.Kind == TokenKind.Integer)
                {
                    var t = Next();
                    e = new ItemExpr(pos, e, new LiteralExpr(t.Position, long.Parse(t.Value, CultureInfo.InvariantCulture)));
                }
                else
                {
                    e = new AttrExpr(pos, e, ExpectName());
                }
            }
            else if (IsOp("["))
            {
                int pos = Next().Position;
                Expr? start = null, stop = null, step = null;
                bool slice = false;
                if (!IsOp(":")) start = ParseExpression();
                if (IsOp(":"))
                {
                    slice = true;
                    Next();
                    if (!IsOp(":") && !IsOp("]")) stop = ParseExpression();
                    if (IsOp(":"))
                    {
                        Next();
                        if (!IsOp("]")) step = ParseExpression();
                    }
                }
                ExpectOp("]");
                e = slice ? new SliceExpr(pos, e, start, stop, step) : new ItemExpr(pos, e, start!);
            }
            else if (IsOp("("))
            {
                int pos = Current.Position;
                var (args, kwargs) = ParseCallArguments();
                e = new CallExpr(pos, e, args, kwargs);
            }
            else return e;
        }
    }

    private (List<Expr>, List<(string, Expr)>) ParseCallArguments()
    {
        ExpectOp("(");
        var args = new List<Expr>();
        var kwargs = new List<(string, Expr)>();
        while (!IsOp(")"))
        {
            if (Current.Kind == TokenKind.Name && _tokens[_i + 1].Kind == TokenKind.Operator && _tokens[_i + 1].Value == "=")
            {
                string n = Next().Value;
                Next();
                kwargs.Add((n, ParseExpression()));
            }
            else
            {
                if (IsOp("*")) throw Unsupported(Current.Position, "*args in a call");
                if (kwargs.Count > 0) throw Syntax(Current.Position, "positional argument after keyword argument");
                args.Add(ParseExpression());
            }
            if (!IsOp(",")) break;
            Next();
        }
        ExpectOp(")");
        return (args, kwargs);
    }

    private FilterExpr ParseFilterCall(Expr? value)
    {
        int pos = Current.Position;
        string name = ExpectName();
        while (IsOp("."))
        {
            Next();
            name += "." + ExpectName();
        }
        var (args, kwargs) = IsOp("(") ? ParseCallArguments() : ([], []);
        return new FilterExpr(pos, value, name, args, kwargs);
    }

    private Expr ParseFilterAndTests(Expr e)
    {
        while (true)
        {
            if (IsOp("|"))
            {
                Next();
                e = ParseFilterCall(e);
                e = ParsePostfix(e);
            }
            else if (IsName("is"))
            {
                int pos = Next().Position;
                bool negated = false;
                if (IsName("not"))
                {
                    Next();
                    negated = true;
                }
                string name = ExpectName();
                var args = new List<Expr>();
                if (IsOp("("))
                {
                    var (a, _) = ParseCallArguments();
                    args = a;
                }
                else if (Current.Kind is TokenKind.String or TokenKind.Integer or TokenKind.Float
                         || IsOp("[") || IsOp("{")
                         || (Current.Kind == TokenKind.Name && Current.Value is not ("and" or "or" or "else" or "if" or "in" or "not" or "is")))
                {
                    args.Add(ParsePostfix(ParsePrimary()));
                }
                e = new TestExpr(pos, e, name, args, negated);
            }
            else return e;
        }
    }
}
