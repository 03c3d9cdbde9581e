using Spectre.Console;

namespace QLoRA.Cli;

/// <summary>A live status line on a terminal (Spectre.Console); plain lines, one per message, when output is redirected.</summary>
internal static class Progress
{
    public static T Run<T>(CommandContext context, string title, Func<Action<string>, T> work)
    {
        if (!context.Interactive)
        {
            return work(message => context.Output.WriteLine(message));
        }

        IAnsiConsole console = AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(context.Output) });
        T result = default!;
        console.Status().Start(title, status => result = work(message => status.Status(Markup.Escape(message))));
        return result;
    }
}
