namespace QLoRA.Text.Templates;

/// <summary>A template node; <see cref="Position"/> is the source offset used in error messages.</summary>
internal abstract record Node(int Position);

internal abstract record Expr(int Position) : Node(Position);

internal sealed record LiteralExpr(int Position, object? Value) : Expr(Position);
internal sealed record NameExpr(int Position, string Name) : Expr(Position);
internal sealed record ListExpr(int Position, List<Expr> Items, bool IsTuple) : Expr(Position);
internal sealed record DictExpr(int Position, List<(Expr Key, Expr Value)> Items) : Expr(Position);
internal sealed record AttrExpr(int Position, Expr Target, string Name) : Expr(Position);
internal sealed record ItemExpr(int Position, Expr Target, Expr Index) : Expr(Position);
internal sealed record SliceExpr(int Position, Expr Target, Expr? Start, Expr? Stop, Expr? Step) : Expr(Position);
internal sealed record CallExpr(int Position, Expr Function, List<Expr> Args, List<(string Name, Expr Value)> Kwargs) : Expr(Position);
internal sealed record FilterExpr(int Position, Expr? Value, string Name, List<Expr> Args, List<(string Name, Expr Value)> Kwargs) : Expr(Position);
internal sealed record TestExpr(int Position, Expr Value, string Name, List<Expr> Args, bool Negated) : Expr(Position);
internal sealed record UnaryExpr(int Position, string Op, Expr Operand) : Expr(Position);
internal sealed record BinaryExpr(int Position, string Op, Expr Left, Expr Right) : Expr(Position);
internal sealed record CompareExpr(int Position, Expr First, List<(string Op, Expr Operand)> Rest) : Expr(Position);
internal sealed record CondExpr(int Position, Expr Condition, Expr Then, Expr? Else) : Expr(Position);

internal sealed record TextNode(int Position, string Text) : Node(Position);
internal sealed record OutputNode(int Position, Expr Value) : Node(Position);
internal sealed record IfNode(int Position, List<(Expr Condition, List<Node> Body)> Branches, List<Node>? Else) : Node(Position);
internal sealed record ForNode(int Position, List<string> Targets, Expr Iterable, Expr? Filter, List<Node> Body, List<Node>? Else, bool Recursive) : Node(Position);
internal sealed record SetNode(int Position, List<string> Names, string? Attribute, Expr Value) : Node(Position);
internal sealed record SetBlockNode(int Position, string Name, List<FilterExpr> Filters, List<Node> Body) : Node(Position);
internal sealed record MacroNode(int Position, string Name, List<(string Name, Expr? Default)> Parameters, List<Node> Body) : Node(Position);
internal sealed record CallBlockNode(int Position, CallExpr Call, List<(string Name, Expr? Default)> CallerParameters, List<Node> Body) : Node(Position);
internal sealed record FilterBlockNode(int Position, List<FilterExpr> Filters, List<Node> Body) : Node(Position);
internal sealed record BreakNode(int Position) : Node(Position);
internal sealed record ContinueNode(int Position) : Node(Position);
internal sealed record GenerationNode(int Position, List<Node> Body) : Node(Position);
internal sealed record DoNode(int Position, Expr Value) : Node(Position);
