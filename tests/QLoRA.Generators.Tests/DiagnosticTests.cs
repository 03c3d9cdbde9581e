namespace QLoRA.Generators.Tests;

/// <summary>One case per diagnostic: it fires on bad code (at the right place) and the good variant is silent.</summary>
public class DiagnosticTests
{
    private const string Usings = "using QLoRA.Modeling; using QLoRA.Runtime.Layers;\n";

    public static TheoryData<string, string, string> Cases() => new()
    {
        // id, bad code, good code
        { "QLR0001", "[CausalLM] public class M { }", "[CausalLM] public partial class M { }" },
        { "QLR0002", "[CausalLM] public partial class M { [RmsNorm(8)] public RmsNormLayer Norm { get; } = null!; }", "[CausalLM] public partial class M { [RmsNorm(8)] public partial RmsNormLayer Norm { get; } }" },
        { "QLR0003", "[CausalLM] public partial class M { [Linear(8, 8)] public partial QuantizedLinear W { get; } }", "[CausalLM] public partial class M { [Linear(8, 8), Nf4] public partial QuantizedLinear W { get; } }" },
        { "QLR0004", "[CausalLM] public partial class M { [Linear(0, 8)] public partial Linear W { get; } }", "[CausalLM] public partial class M { [Linear(\"hidden_size\", 8)] public partial Linear W { get; } }" },
        { "QLR0005", "[CausalLM] public partial class M { [Linear(64, 64), Nf4(BlockSize = 48)] public partial QuantizedLinear W { get; } }", "[CausalLM] public partial class M { [Linear(64, 64), Nf4(BlockSize = 32)] public partial QuantizedLinear W { get; } }" },
        { "QLR0006", "[CausalLM] public partial class M { [Linear(64, 16), Nf4, LoRA(Rank = 32)] public partial QuantizedLinear W { get; } }", "[CausalLM] public partial class M { [Linear(64, 16), Nf4, LoRA(Rank = 16)] public partial QuantizedLinear W { get; } }" },
        { "QLR0007", "[CausalLM] public partial class M { [RmsNorm(8), HfName(\"norm\")] public partial RmsNormLayer A { get; } [RmsNorm(8)] public partial RmsNormLayer Norm { get; } }", "[CausalLM] public partial class M { [RmsNorm(8), HfName(\"final_norm\")] public partial RmsNormLayer A { get; } [RmsNorm(8)] public partial RmsNormLayer Norm { get; } }" },
        { "QLR0008", "[CausalLM] public partial class M { [Nf4] public QuantizedLinear? W { get; set; } }", "[CausalLM] public partial class M { public QuantizedLinear? W { get; set; } }" },
        { "QLR0009", "[Block] public partial class B { } [CausalLM] public partial class M { [Stack(0)] public partial B[] Blocks { get; } }", "[Block] public partial class B { } [CausalLM] public partial class M { [Stack(3)] public partial B[] Blocks { get; } }" },
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public void FiresOnBadCodeAndIsSilentOnGoodCode(string id, string bad, string good)
    {
        var (_, badDiagnostics, _) = GeneratorHarness.Run(Usings + bad);
        var diagnostic = Assert.Single(badDiagnostics, d => d.Id == id);
        Assert.NotEqual(Microsoft.CodeAnalysis.Location.None, diagnostic.Location);
        Assert.True(string.IsNullOrEmpty(diagnostic.Descriptor.HelpLinkUri), "no link to an address that does not exist");
        Assert.Contains($"docs/diagnostics.md#{id.ToLowerInvariant()}", diagnostic.Descriptor.Description.ToString());

        var (_, goodDiagnostics, _) = GeneratorHarness.Run(Usings + good);
        Assert.Empty(goodDiagnostics);
    }

    [Fact]
    public void RankAboveConstantDimensionsNamesTheLimit()
    {
        var (_, diagnostics, _) = GeneratorHarness.Run(Usings + "[CausalLM] public partial class M { [Linear(64, 16), Nf4, LoRA(Rank = 32)] public partial QuantizedLinear W { get; } }");
        Assert.Contains("at most min(in, out) = 16", Assert.Single(diagnostics).GetMessage(System.Globalization.CultureInfo.InvariantCulture));
    }
}
