namespace QLoRA.Text.Templates;

/// <summary>A chat template failed to parse or render; names the template's source and the line and column.</summary>
public class TemplateException(string source, int line, int column, string problem, Exception? inner = null)
    : TextFormatException(source, $"line {line}, column {column}", problem, inner)
{
    /// <summary>1-based line in the template.</summary>
    public int Line { get; } = line;

    /// <summary>1-based column in the template.</summary>
    public int Column { get; } = column;
}

/// <summary>The template is not valid Jinja.</summary>
public sealed class TemplateSyntaxException(string source, int line, int column, string problem)
    : TemplateException(source, line, column, problem);

/// <summary>The template uses a Jinja construct (tag, filter, test, method) this engine does not implement.</summary>
public sealed class TemplateUnsupportedException(string source, int line, int column, string construct)
    : TemplateException(source, line, column, $"'{construct}' is not supported by this Jinja engine")
{
    /// <summary>The construct, e.g. "filter 'wordwrap'" or "tag 'include'".</summary>
    public string Construct { get; } = construct;
}

/// <summary>Rendering failed: a type error, an undefined value used where a value is needed, a bad argument.</summary>
public sealed class TemplateRuntimeException(string source, int line, int column, string problem, Exception? inner = null)
    : TemplateException(source, line, column, problem, inner);

/// <summary>The template itself called <c>raise_exception(message)</c>, e.g. for an unsupported role order.</summary>
public sealed class TemplateRaisedException(string source, int line, int column, string message)
    : TemplateException(source, line, column, $"the template raised: {message}")
{
    /// <summary>The template's own message.</summary>
    public string TemplateMessage { get; } = message;
}

/// <summary>Builds template exceptions from a source offset.</summary>
internal static class TemplateErrors
{
    public static TemplateSyntaxException Syntax(string source, string name, int position, string message)
    {
        var (line, col) = Lexer.Position(source, position);
        return new TemplateSyntaxException(name, line, col, message);
    }

    public static TemplateUnsupportedException Unsupported(string source, string name, int position, string construct)
    {
        var (line, col) = Lexer.Position(source, position);
        return new TemplateUnsupportedException(name, line, col, construct);
    }

    public static TemplateRuntimeException Runtime(string source, string name, int position, string message, Exception? inner = null)
    {
        var (line, col) = Lexer.Position(source, position);
        return new TemplateRuntimeException(name, line, col, message, inner);
    }
}
