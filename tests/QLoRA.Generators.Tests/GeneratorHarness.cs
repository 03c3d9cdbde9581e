using System.Collections.Immutable;
using Microsoft.CodeAnalysis;
using Microsoft.CodeAnalysis.CSharp;

namespace QLoRA.Generators.Tests;

/// <summary>Runs the generator on source text against the real runtime assemblies.</summary>
internal static class GeneratorHarness
{
    public static readonly CSharpParseOptions ParseOptions = new(LanguageVersion.Latest);

    private static readonly ImmutableArray<MetadataReference> References = BuildReferences();

    private static ImmutableArray<MetadataReference> BuildReferences()
    {
        string platform = (string)AppContext.GetData("TRUSTED_PLATFORM_ASSEMBLIES")!;
        var paths = platform.Split(Path.PathSeparator).Where(p => Path.GetFileName(p).StartsWith("System.", StringComparison.Ordinal) || Path.GetFileName(p) is "netstandard.dll" or "mscorlib.dll").ToList();
        paths.Add(typeof(QLoRA.Runtime.Layers.QuantizedLinear).Assembly.Location);
        paths.Add(typeof(QLoRA.Core.Weights.IWeightSource).Assembly.Location);
        paths.Add(typeof(ILGPU.Context).Assembly.Location);
        return [.. paths.Distinct().Select(p => (MetadataReference)MetadataReference.CreateFromFile(p))];
    }

    public static CSharpCompilation Compilation(params string[] sources) =>
        CSharpCompilation.Create("Generated" + Guid.NewGuid().ToString("N")[..8], sources.Select((s, i) => CSharpSyntaxTree.ParseText(s, ParseOptions, path: $"Source{i}.cs")), References,
            new CSharpCompilationOptions(OutputKind.DynamicallyLinkedLibrary, nullableContextOptions: NullableContextOptions.Enable));

    public static GeneratorDriver Driver(params AdditionalText[] additionalTexts) =>
        CSharpGeneratorDriver.Create([new ModelGenerator().AsSourceGenerator()], additionalTexts: additionalTexts, parseOptions: ParseOptions,
            driverOptions: new GeneratorDriverOptions(IncrementalGeneratorOutputKind.None, trackIncrementalGeneratorSteps: true));

    /// <summary>Runs with additional files (e.g. weights manifests).</summary>
    public static ImmutableArray<Diagnostic> RunWithFiles(string source, params (string Path, string Text)[] files)
    {
        Driver([.. files.Select(f => (AdditionalText)new InMemoryText(f.Path, f.Text))]).RunGeneratorsAndUpdateCompilation(Compilation(source), out _, out ImmutableArray<Diagnostic> diagnostics);
        return WithoutEngineBinding(diagnostics);
    }

    /// <summary>
    /// Leaves out QLR0015 (a model the engine cannot run): most test models are deliberately partial structures that
    /// exercise loading, and the binding has tests of its own (<see cref="RunAll"/>).
    /// </summary>
    private static ImmutableArray<Diagnostic> WithoutEngineBinding(ImmutableArray<Diagnostic> diagnostics) => [.. diagnostics.Where(d => d.Id != "QLR0015")];

    /// <summary>Runs the generator and returns every diagnostic, QLR0015 included.</summary>
    public static (Compilation Output, ImmutableArray<Diagnostic> Diagnostics) RunAll(params string[] sources)
    {
        Driver().RunGeneratorsAndUpdateCompilation(Compilation(sources), out Compilation output, out ImmutableArray<Diagnostic> diagnostics);
        return (output, diagnostics);
    }

    private sealed class InMemoryText(string path, string text) : AdditionalText
    {
        public override string Path => path;

        public override Microsoft.CodeAnalysis.Text.SourceText GetText(CancellationToken cancellationToken = default) => Microsoft.CodeAnalysis.Text.SourceText.From(text);
    }

    public static (Compilation Output, ImmutableArray<Diagnostic> Diagnostics, GeneratorDriverRunResult Run) Run(params string[] sources)
    {
        GeneratorDriver driver = Driver().RunGeneratorsAndUpdateCompilation(Compilation(sources), out Compilation output, out ImmutableArray<Diagnostic> diagnostics);
        return (output, WithoutEngineBinding(diagnostics), driver.GetRunResult());
    }
}
