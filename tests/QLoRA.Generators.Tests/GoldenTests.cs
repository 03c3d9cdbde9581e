using Microsoft.CodeAnalysis;

namespace QLoRA.Generators.Tests;

/// <summary>Generated source against checked-in golden files; set QLORA_UPDATE_GOLDEN=1 to rewrite them.</summary>
public class GoldenTests
{
    public static TheoryData<string, string> Cases() => new()
    {
        { nameof(Models.TinyLlama), Models.TinyLlama },
        { nameof(Models.ConstantFp4), Models.ConstantFp4 },
        { nameof(Models.Qwen), Models.Qwen },
        { nameof(Models.UserLlama), Models.UserLlama },
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public void GeneratedSourceMatchesGoldenFilesAndCompiles(string name, string source)
    {
        (Compilation output, var diagnostics, GeneratorDriverRunResult run) = GeneratorHarness.Run(source);
        Assert.Empty(diagnostics);
        var errors = output.GetDiagnostics(TestContext.Current.CancellationToken).Where(d => d.Severity == DiagnosticSeverity.Error).ToList();
        Assert.True(errors.Count == 0, string.Join("\n", errors));
        foreach (GeneratedSourceResult generated in run.Results.SelectMany(r => r.GeneratedSources))
        {
            string file = $"{name}.{generated.HintName}";
            string text = generated.SourceText.ToString().ReplaceLineEndings("\n");
            string golden = Path.Combine(AppContext.BaseDirectory, "Golden", file);
            if (Environment.GetEnvironmentVariable("QLORA_UPDATE_GOLDEN") == "1")
            {
                string repo = Path.GetFullPath(Path.Combine(AppContext.BaseDirectory, "../../../Golden", file));
                File.WriteAllText(repo, text);
                continue;
            }

            Assert.True(File.Exists(golden), $"missing golden file {file} (run with QLORA_UPDATE_GOLDEN=1)");
            Assert.Equal(File.ReadAllText(golden).ReplaceLineEndings("\n"), text);
        }
    }

    [Theory]
    [InlineData("QProj", "q_proj")]
    [InlineData("LmHead", "lm_head")]
    [InlineData("InputLayernorm", "input_layernorm")]
    [InlineData("Norm", "norm")]
    public void PropertyNamesMapToSnakeCase(string property, string expected)
    {
        Assert.Equal(expected, Parser.SnakeCase(property));
    }
}
