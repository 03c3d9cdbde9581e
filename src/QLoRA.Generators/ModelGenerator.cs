using Microsoft.CodeAnalysis;
using Microsoft.CodeAnalysis.CSharp.Syntax;

namespace QLoRA.Generators;

/// <summary>
/// Implements [CausalLM] and [Block] classes: parse (symbols → equatable model) → emit, with diagnostics reported
/// from the model so unrelated edits leave the pipeline cached.
/// </summary>
[Generator(LanguageNames.CSharp)]
public sealed class ModelGenerator : IIncrementalGenerator
{
    /// <summary>Tracking names of the pipeline steps (for caching tests).</summary>
    public const string RootStep = "QLoRA.Roots", BlockStep = "QLoRA.Blocks", ManifestStep = "QLoRA.ManifestChecks", EngineStep = "QLoRA.EngineBinding";

    /// <inheritdoc />
    public void Initialize(IncrementalGeneratorInitializationContext context)
    {
        IncrementalValuesProvider<ParseResult> roots = context.SyntaxProvider.ForAttributeWithMetadataName(
            "QLoRA.Modeling.CausalLMAttribute",
            static (node, _) => node is ClassDeclarationSyntax,
            static (ctx, ct) => Parser.Parse(ctx, isRoot: true, ct)).WithTrackingName(RootStep);
        IncrementalValuesProvider<ParseResult> blocks = context.SyntaxProvider.ForAttributeWithMetadataName(
            "QLoRA.Modeling.BlockAttribute",
            static (node, _) => node is ClassDeclarationSyntax,
            static (ctx, ct) => Parser.Parse(ctx, isRoot: false, ct)).WithTrackingName(BlockStep);
        context.RegisterSourceOutput(roots, Output);
        context.RegisterSourceOutput(blocks, Output);

        // Compile-time checks against weights manifests the build passes as AdditionalFiles (<OutputName>.qlora.json).
        IncrementalValueProvider<System.Collections.Immutable.ImmutableArray<ManifestModel>> manifests = context.AdditionalTextsProvider
            .Where(static text => text.Path.EndsWith(".qlora.json", System.StringComparison.OrdinalIgnoreCase))
            .Select(static (text, ct) => ManifestModel.Parse(text.Path, text.GetText(ct)?.ToString() ?? ""))
            .Collect();
        IncrementalValueProvider<System.Collections.Immutable.ImmutableArray<ClassModel?>> blockModels = blocks.Select(static (r, _) => r.Model).Collect();
        IncrementalValuesProvider<EquatableArray<DiagnosticInfo>> checks = roots.Combine(blockModels).Combine(manifests)
            .Select(static (input, _) => ManifestChecker.Check(input.Left.Left, input.Left.Right, input.Right))
            .WithTrackingName(ManifestStep);
        // The engine binding needs the root's blocks too: a Llama-family model gets ToEngineModel(), others a warning.
        IncrementalValuesProvider<(string Name, string? Source, DiagnosticInfo? Diagnostic)> bindings = roots.Combine(blockModels)
            .Select(static (input, _) =>
            {
                (string? source, DiagnosticInfo? diagnostic) = EngineBinding.Bind(input.Left, input.Right);
                return (input.Left.Model?.FullName ?? "", source, diagnostic);
            })
            .WithTrackingName(EngineStep);
        context.RegisterSourceOutput(bindings, static (ctx, binding) =>
        {
            if (binding.Diagnostic is DiagnosticInfo diagnostic)
            {
                ctx.ReportDiagnostic(diagnostic.ToDiagnostic());
            }

            if (binding.Source is string source)
            {
                ctx.AddSource(binding.Name + ".Engine.g.cs", source);
            }
        });
        context.RegisterSourceOutput(checks, static (ctx, diagnostics) =>
        {
            foreach (DiagnosticInfo diagnostic in diagnostics)
            {
                ctx.ReportDiagnostic(diagnostic.ToDiagnostic());
            }
        });
    }

    private static void Output(SourceProductionContext context, ParseResult result)
    {
        foreach (DiagnosticInfo diagnostic in result.Diagnostics)
        {
            context.ReportDiagnostic(diagnostic.ToDiagnostic());
        }

        if (result.Model is ClassModel model)
        {
            context.AddSource(model.FullName + ".g.cs", Emitter.Emit(model));
        }
    }
}
