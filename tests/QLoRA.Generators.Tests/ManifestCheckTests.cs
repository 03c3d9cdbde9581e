using System.Text.Json.Nodes;

namespace QLoRA.Generators.Tests;

/// <summary>Compile-time checks of a model definition against the weights manifest the build passes as an AdditionalFile.</summary>
public class ManifestCheckTests
{
    private static JsonObject Manifest()
    {
        var tensors = new JsonObject
        {
            ["model.embed_tokens.weight"] = Entry([100, 64], "bf16"),
            ["model.norm.weight"] = Entry([64], "bf16"),
            ["lm_head.weight"] = Entry([100, 64], "bf16"),
        };
        for (int i = 0; i < 2; i++)
        {
            tensors[$"model.layers.{i}.input_layernorm.weight"] = Entry([64], "bf16");
            tensors[$"model.layers.{i}.self_attn.q_proj.weight"] = Entry([64, 64], "nf4", 64);
            tensors[$"model.layers.{i}.mlp.up_proj.weight"] = Entry([128, 64], "nf4", 64);
            tensors[$"model.layers.{i}.mlp.down_proj.weight"] = Entry([64, 128], "nf4", 64);
        }

        return new JsonObject
        {
            ["version"] = 1,
            ["model"] = "tiny",
            ["config"] = new JsonObject { ["hidden_size"] = 64, ["intermediate_size"] = 128, ["num_hidden_layers"] = 2, ["vocab_size"] = 100 },
            ["tied"] = new JsonArray(),
            ["tensors"] = tensors,
        };
    }

    private static JsonObject Entry(long[] shape, string stored, int blockSize = 0)
    {
        var e = new JsonObject { ["shape"] = new JsonArray([.. shape.Select(d => (JsonNode?)d)]), ["stored"] = stored, ["source_sha256"] = "00" };
        if (blockSize > 0)
        {
            e["blocksize"] = blockSize;
            e["double_quant"] = true;
        }

        return e;
    }

    private static Microsoft.CodeAnalysis.Diagnostic[] Check(JsonObject manifest, string source = Models.TinyLlama) =>
        [.. GeneratorHarness.RunWithFiles(source, ("/obj/qlora/tiny.qlora.json", manifest.ToJsonString()))];

    [Fact]
    public void MatchingWeightsAreSilent()
    {
        Assert.Empty(Check(Manifest()));
    }

    [Fact]
    public void AMissingTensorIsReportedAtTheProperty()
    {
        JsonObject manifest = Manifest();
        manifest["tensors"]!.AsObject().Remove("model.layers.1.mlp.down_proj.weight");
        var d = Assert.Single(Check(manifest));
        Assert.Equal("QLR0010", d.Id);
        Assert.Contains("'model.layers.1.mlp.down_proj.weight' (TinyLlama.Layers[1].DownProj) is not in weights 'tiny'", d.GetMessage(System.Globalization.CultureInfo.InvariantCulture));
        // Reported at the DownProj declaration of the block.
        var span = d.Location.GetLineSpan();
        Assert.Equal("Source0.cs", span.Path);
        string[] lines = Models.TinyLlama.Split('\n');
        Assert.Contains("DownProj", lines[span.StartLinePosition.Line], StringComparison.Ordinal);
    }

    [Fact]
    public void ACauseRepeatedInEveryLayerOfAStackIsReportedOnce()
    {
        JsonObject manifest = Manifest();
        var tensors = manifest["tensors"]!.AsObject();
        for (int i = 0; i < 2; i++)
        {
            tensors[$"model.layers.{i}.mlp.up_proj.weight"] = Entry([127, 64], "nf4", 64);   // wrong in both layers
        }

        tensors.Remove("model.layers.1.mlp.down_proj.weight");                               // missing in one layer only
        var ds = Check(manifest);
        Assert.Single(ds, d => d.Id == "QLR0011");   // one shape cause, not one per layer
        Assert.Single(ds, d => d.Id == "QLR0010");
        Assert.Equal(2, ds.Length);
    }

    [Fact]
    public void AWeightsNameMatchingNoManifestWarnsWithTheKnownNames()
    {
        JsonObject manifest = Manifest();
        manifest["model"] = "tinny";
        var d = Assert.Single(Check(manifest));
        Assert.Equal("QLR0014", d.Id);
        Assert.Equal(Microsoft.CodeAnalysis.DiagnosticSeverity.Warning, d.Severity);
        Assert.Contains("names weights 'tiny', but this build has manifests only for 'tinny'", d.GetMessage(System.Globalization.CultureInfo.InvariantCulture));
        // No manifest at all: silent (checked at load time).
        Assert.Empty(GeneratorHarness.RunWithFiles(Models.TinyLlama));
    }

    [Fact]
    public void TiedTensorsAreNotMissing()
    {
        JsonObject manifest = Manifest();
        manifest["tensors"]!.AsObject().Remove("lm_head.weight");
        manifest["tied"] = new JsonArray("lm_head.weight");
        Assert.Empty(Check(manifest));
    }

    [Fact]
    public void AShapeMismatchNamesBothShapes()
    {
        JsonObject manifest = Manifest();
        manifest["tensors"]!["model.layers.0.mlp.up_proj.weight"] = Entry([96, 64], "nf4", 64);
        var d = Assert.Single(Check(manifest));
        Assert.Equal("QLR0011", d.Id);
        Assert.Contains("has shape [96, 64] in weights 'tiny' but the model declares [128, 64]", d.GetMessage(System.Globalization.CultureInfo.InvariantCulture));
    }

    [Fact]
    public void StorageAndBlockSizeMismatchesAreReported()
    {
        JsonObject manifest = Manifest();
        manifest["tensors"]!["model.layers.0.self_attn.q_proj.weight"] = Entry([64, 64], "nf4", 128);
        manifest["tensors"]!["lm_head.weight"] = Entry([100, 64], "nf4", 64);
        var diagnostics = Check(manifest);
        Assert.Equal(2, diagnostics.Length);
        Assert.All(diagnostics, d => Assert.Equal("QLR0012", d.Id));
        Assert.Contains(diagnostics, d => d.GetMessage(System.Globalization.CultureInfo.InvariantCulture).Contains("is stored nf4 (block 128) in weights 'tiny' but the model declares nf4 (block 64)", StringComparison.Ordinal));
        Assert.Contains(diagnostics, d => d.GetMessage(System.Globalization.CultureInfo.InvariantCulture).Contains("'lm_head.weight' (TinyLlama.LmHead) is stored nf4 (block 64)", StringComparison.Ordinal));
    }

    [Fact]
    public void UnlinkedModelsAndOtherWeightsAreNotChecked()
    {
        JsonObject manifest = Manifest();
        manifest["tensors"] = new JsonObject();
        Assert.Empty(Check(manifest, Models.TinyLlama.Replace("[CausalLM(Weights = \"tiny\")]", "[CausalLM]", StringComparison.Ordinal)));
        // Linked to weights this build does not produce: not checked against the other manifest, only warned about.
        manifest["model"] = "other";
        var d = Assert.Single(Check(manifest));
        Assert.Equal("QLR0014", d.Id);
        Assert.Equal(Microsoft.CodeAnalysis.DiagnosticSeverity.Warning, d.Severity);
    }

    [Fact]
    public void AnUnreadableManifestIsReported()
    {
        var d = Assert.Single(GeneratorHarness.RunWithFiles(Models.TinyLlama, ("/obj/qlora/tiny.qlora.json", "{\"tensors\": [")));
        Assert.Equal("QLR0013", d.Id);
    }
}
