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
    public const string RootStep = "QLoRA.Roots", BlockStep = "QLoRA.Blocks";

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
