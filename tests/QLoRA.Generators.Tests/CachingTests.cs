using Microsoft.CodeAnalysis;
using Microsoft.CodeAnalysis.CSharp;

namespace QLoRA.Generators.Tests;

/// <summary>Incremental caching: unrelated edits leave every step cached; editing one model re-runs only it.</summary>
public class CachingTests
{
    [Fact]
    public void UnrelatedEditsAreCachedAndAnAttributeEditRerunsOnlyThatModel()
    {
        // The root and its block in separate files, as a real project keeps them.
        int split = Models.TinyLlama.IndexOf("[Block]", StringComparison.Ordinal);
        string rootFile = Models.TinyLlama[..split], blockFile = "using QLoRA.Modeling;\nusing QLoRA.Runtime.Layers;\nnamespace Demo;\n" + Models.TinyLlama[split..];
        CSharpCompilation compilation = GeneratorHarness.Compilation(rootFile, blockFile, "namespace Other { public class Unrelated { } }");
        GeneratorDriver driver = GeneratorHarness.Driver().RunGenerators(compilation, TestContext.Current.CancellationToken);

        // An edit in an unrelated file.
        SyntaxTree unrelated = compilation.SyntaxTrees.Last();
        CSharpCompilation edited = compilation.ReplaceSyntaxTree(unrelated, CSharpSyntaxTree.ParseText("namespace Other { public class Unrelated { public int X; } }", GeneratorHarness.ParseOptions, path: unrelated.FilePath, cancellationToken: TestContext.Current.CancellationToken));
        driver = driver.RunGenerators(edited, TestContext.Current.CancellationToken);
        GeneratorRunResult run = driver.GetRunResult().Results.Single();
        foreach (string step in new[] { ModelGenerator.RootStep, ModelGenerator.BlockStep })
        {
            Assert.All(run.TrackedSteps[step].SelectMany(s => s.Outputs), o => Assert.True(o.Reason is IncrementalStepRunReason.Cached or IncrementalStepRunReason.Unchanged, $"{step}: {o.Reason}"));
        }

        // Editing the root model's attribute: the root step re-runs, the block step stays cached.
        SyntaxTree model = edited.SyntaxTrees.First();
        CSharpCompilation attributeEdit = edited.ReplaceSyntaxTree(model, CSharpSyntaxTree.ParseText(rootFile.Replace("Weights = \"tiny\"", "Weights = \"tiny2\"", StringComparison.Ordinal), GeneratorHarness.ParseOptions, path: model.FilePath, cancellationToken: TestContext.Current.CancellationToken));
        driver = driver.RunGenerators(attributeEdit, TestContext.Current.CancellationToken);
        run = driver.GetRunResult().Results.Single();
        Assert.Contains(run.TrackedSteps[ModelGenerator.RootStep].SelectMany(s => s.Outputs), o => o.Reason == IncrementalStepRunReason.Modified);
        Assert.All(run.TrackedSteps[ModelGenerator.BlockStep].SelectMany(s => s.Outputs), o => Assert.True(o.Reason is IncrementalStepRunReason.Cached or IncrementalStepRunReason.Unchanged, $"block: {o.Reason}"));
    }
}
