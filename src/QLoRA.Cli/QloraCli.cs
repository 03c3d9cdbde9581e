using System.CommandLine;
using System.CommandLine.Help;
using QLoRA.Build.Tasks;
using QLoRA.Core;
using QLoRA.Core.HuggingFace;
using QLoRA.Runtime.Training;

namespace QLoRA.Cli;

/// <summary>
/// The <c>qlora</c> command line. Exit codes: 0 success, 1 a user error (one clear message on stderr; the stack trace
/// only with <c>--verbose</c>), 2 a usage error. Commands that write leave nothing half-written on failure.
/// </summary>
public static class QloraCli
{
    /// <summary>Exit code of a user error (bad file, bad value).</summary>
    public const int UserError = 1;

    /// <summary>Exit code of a usage error (unknown command or option, missing argument).</summary>
    public const int UsageError = 2;

    /// <summary>Runs the command line with <paramref name="args"/>, writing to <paramref name="output"/> and <paramref name="error"/>.</summary>
    /// <param name="args">The arguments.</param>
    /// <param name="output">Standard output.</param>
    /// <param name="error">Standard error.</param>
    /// <param name="interactive">Whether output is a terminal (progress displays) or redirected (plain lines).</param>
    /// <param name="input">Standard input (the chat command reads its turns from it); null: the console's.</param>
    public static int Run(string[] args, TextWriter output, TextWriter error, bool interactive = false, TextReader? input = null)
    {
        var verbose = new Option<bool>("--verbose") { Description = "Show the full exception of an error", Recursive = true };
        // Named "qlora" whatever process hosts it (the tool, dotnet run, a test), so help reads the same everywhere.
        var root = new Command("qlora", "qlora: fine-tune, run, inspect and convert 4-bit (QLoRA) models from Hugging Face checkpoints")
        {
            new HelpOption(), new VersionOption(),
        };
        root.Options.Add(verbose);
        var context = new CommandContext(output, error, interactive, input ?? Console.In);
        root.Subcommands.Add(InspectCommand.Create(context));
        root.Subcommands.Add(QuantizeCommand.Create(context));
        root.Subcommands.Add(DequantizeCommand.Create(context));
        root.Subcommands.Add(ScoreCommand.Create(context));
        root.Subcommands.Add(MergeCommand.Create(context));
        root.Subcommands.Add(TrainCommand.Create(context));
        root.Subcommands.Add(GenerateCommand.Create(context));
        root.Subcommands.Add(ChatCommand.Create(context));
        root.Subcommands.Add(TokenizeCommand.Create(context));
        root.Subcommands.Add(BenchCommand.Create(context));
        root.Subcommands.Add(DemoCommand.Create(context));

        ParseResult parsed = root.Parse(args);
        if (parsed.Errors.Count > 0)
        {
            foreach (System.CommandLine.Parsing.ParseError e in parsed.Errors)
            {
                error.WriteLine($"qlora: {e.Message}");
            }

            error.WriteLine("Run 'qlora --help' for usage.");
            return UsageError;
        }

        try
        {
            return parsed.Invoke(new InvocationConfiguration { Output = output, Error = error, EnableDefaultExceptionHandler = false });
        }
        catch (Exception e) when (IsUserError(e))
        {
            error.WriteLine($"qlora: {e.Message}");
            if (parsed.GetValue(verbose))
            {
                error.WriteLine(e.ToString());
            }

            return UserError;
        }
    }

    private static bool IsUserError(Exception e) =>
        e is CheckpointFormatException or HfConfigException or WeightsBuildException or FileNotFoundException or DirectoryNotFoundException
            or UnauthorizedAccessException or CliException or ArgumentException or QLoRA.Text.TextFormatException or QLoRA.Text.Data.DatasetFormatException or System.Text.Json.JsonException or TrainingMemoryException or TrainingDivergedException || (e is IOException && e is not EndOfStreamException);
}

/// <summary>A user error the CLI found itself (bad option value, a path of the wrong kind).</summary>
public sealed class CliException(string message) : Exception(message);

/// <summary>Where commands write and whether they may show progress displays.</summary>
internal sealed record CommandContext(TextWriter Output, TextWriter Error, bool Interactive, TextReader Input);
