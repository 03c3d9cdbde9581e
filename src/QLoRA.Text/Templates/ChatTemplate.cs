using System.Text.Json;

namespace QLoRA.Text.Templates;

/// <summary>A chat message: role, content and any other fields the template reads (tool_calls, reasoning_content, …).</summary>
/// <param name="Role">"system", "user", "assistant", "tool", …</param>
/// <param name="Content">The text; null when the message has none (e.g. only tool calls).</param>
public sealed record ChatMessage(string Role, string? Content)
{
    /// <summary>Further fields, as JSON values (objects, arrays, strings, numbers, booleans).</summary>
    public IReadOnlyDictionary<string, JsonElement>? Extra { get; init; }
}

/// <summary>Inputs of a chat-template render, with transformers' variable names.</summary>
public sealed class ChatTemplateInputs
{
    /// <summary><c>messages</c>.</summary>
    public required IReadOnlyList<ChatMessage> Messages { get; init; }

    /// <summary><c>add_generation_prompt</c>: end with the header of an assistant turn.</summary>
    public bool AddGenerationPrompt { get; init; }

    /// <summary>Special-token variables (<c>bos_token</c>, <c>eos_token</c>, …), usually from tokenizer_config.json.</summary>
    public IReadOnlyDictionary<string, string>? SpecialTokens { get; init; }

    /// <summary><c>tools</c>, as JSON (a list of function schemas), when given.</summary>
    public JsonElement? Tools { get; init; }

    /// <summary><c>documents</c>, as JSON, when given.</summary>
    public JsonElement? Documents { get; init; }

    /// <summary>Any other variables (as JSON values), e.g. <c>enable_thinking</c>.</summary>
    public IReadOnlyDictionary<string, JsonElement>? Variables { get; init; }

    /// <summary>The clock <c>strftime_now</c> reads (local time by default).</summary>
    public Func<DateTime>? Now { get; init; }
}

/// <summary>A rendered template and the spans of <c>{% generation %}</c> blocks in it.</summary>
/// <param name="Text">The rendered text.</param>
/// <param name="GenerationSpans">[Start, End) char spans of each <c>{% generation %}</c> block, in order.</param>
public sealed record ChatTemplateOutput(string Text, IReadOnlyList<(int Start, int End)> GenerationSpans);

/// <summary>
/// A Hugging Face chat template (Jinja), parsed once and rendered as transformers does: jinja2 with
/// <c>trim_blocks</c>, <c>lstrip_blocks</c>, loop controls, <c>raise_exception</c>, <c>strftime_now</c>, a
/// <c>tojson</c> that keeps non-ASCII, and <c>{% generation %}</c> spans.
/// </summary>
public sealed class ChatTemplate
{
    private readonly List<Node> _nodes;

    private ChatTemplate(string source, string name, List<Node> nodes)
    {
        Source = source;
        Name = name;
        _nodes = nodes;
        HasGenerationBlocks = ContainsGeneration(nodes);
    }

    /// <summary>The template text.</summary>
    public string Source { get; }

    /// <summary>Where the template came from (a file path, or a name), used in error messages.</summary>
    public string Name { get; }

    /// <summary>Whether the template marks assistant text with <c>{% generation %}</c>.</summary>
    public bool HasGenerationBlocks { get; }

    /// <summary>Parses a template.</summary>
    /// <exception cref="TemplateSyntaxException">Not valid Jinja; names the line and column.</exception>
    /// <exception cref="TemplateUnsupportedException">A tag this engine does not implement (include, import, extends, …).</exception>
    public static ChatTemplate Parse(string source, string name = "chat_template")
    {
        ArgumentNullException.ThrowIfNull(source);
        return new ChatTemplate(source, name, new Parser(source, name).ParseTemplate());
    }

    /// <summary>Renders the template.</summary>
    /// <exception cref="TemplateRaisedException">The template called <c>raise_exception</c>.</exception>
    /// <exception cref="TemplateRuntimeException">A type error or an undefined value used as a value.</exception>
    /// <exception cref="TemplateUnsupportedException">A filter, test or method this engine does not implement.</exception>
    public string Render(ChatTemplateInputs inputs) => RenderWithSpans(inputs).Text;

    /// <summary>Renders the template and reports the <c>{% generation %}</c> spans.</summary>
    public ChatTemplateOutput RenderWithSpans(ChatTemplateInputs inputs)
    {
        var scope = new Scope(null);
        if (inputs.SpecialTokens is not null)
            foreach (var (k, v) in inputs.SpecialTokens) scope.Set(k, v);
        if (inputs.Variables is not null)
            foreach (var (k, v) in inputs.Variables) scope.Set(k, JsonValues.From(v));
        scope.Set("messages", inputs.Messages.Select(m => (object?)JsonValues.From(m)).ToList());
        scope.Set("add_generation_prompt", inputs.AddGenerationPrompt);
        if (inputs.Tools is { } tools) scope.Set("tools", JsonValues.From(tools));
        if (inputs.Documents is { } docs) scope.Set("documents", JsonValues.From(docs));
        var interpreter = new Interpreter(Source, Name) { Now = inputs.Now ?? (() => DateTime.Now) };
        string text = interpreter.Render(_nodes, scope);
        return new ChatTemplateOutput(text, [.. interpreter.GenerationSpans]);
    }

    private static bool ContainsGeneration(IEnumerable<Node> nodes) => nodes.Any(n => n switch
    {
        GenerationNode => true,
        IfNode i => i.Branches.Any(b => ContainsGeneration(b.Body)) || (i.Else is not null && ContainsGeneration(i.Else)),
        ForNode f => ContainsGeneration(f.Body) || (f.Else is not null && ContainsGeneration(f.Else)),
        MacroNode m => ContainsGeneration(m.Body),
        CallBlockNode c => ContainsGeneration(c.Body),
        FilterBlockNode fb => ContainsGeneration(fb.Body),
        SetBlockNode sb => ContainsGeneration(sb.Body),
        _ => false,
    });
}

/// <summary>JSON values as the template engine's Python-like values.</summary>
internal static class JsonValues
{
    public static object? From(JsonElement e) => e.ValueKind switch
    {
        JsonValueKind.Object => e.EnumerateObject().Aggregate(new Dictionary<object, object?>(), (d, p) => { d[p.Name] = From(p.Value); return d; }),
        JsonValueKind.Array => e.EnumerateArray().Select(From).ToList(),
        JsonValueKind.String => e.GetString(),
        JsonValueKind.Number => e.TryGetInt64(out long l) && !e.GetRawText().Contains('.') && !e.GetRawText().Contains('e') && !e.GetRawText().Contains('E') ? l : e.GetDouble(),
        JsonValueKind.True => true,
        JsonValueKind.False => false,
        _ => null,
    };

    public static Dictionary<object, object?> From(ChatMessage m)
    {
        // A message without content has no "content" key (undefined in the template), as a Python dict would.
        var d = new Dictionary<object, object?> { ["role"] = m.Role };
        if (m.Content is not null) d["content"] = m.Content;
        if (m.Extra is not null)
            foreach (var (k, v) in m.Extra) d[k] = From(v);
        return d;
    }
}
