using QLoRA.Core.Manifest;
using QLoRA.Core.Quantization;

namespace QLoRA.Build.Tests;

/// <summary>End-to-end: real `dotnet build` runs of small projects with QLoRAWeights items (serial: one class).</summary>
public class QuantizeWeightsBuildTests
{
    private const string Item = """<QLoRAWeights Include="weights/tiny/*.safetensors" Config="weights/tiny/config.json" OutputName="tiny" BlockSize="$(QLoRABlockSize)" />""";

    [Fact]
    public void BuildQuantizesOnceCopiesToOutputAndRerunsOnlyWhenInputsChange()
    {
        string project = DotnetBuild.WriteProject(Directory.CreateTempSubdirectory("qlora-e2e-").FullName, Item);
        Dictionary<string, byte[]> source = TinyCheckpoint.Write(Path.Combine(project, "weights", "tiny"));

        (int code, string log) = DotnetBuild.Run(project);
        Assert.True(code == 0, log);
        Assert.Contains("QLoRA: quantizing 'tiny'", log);
        string obj = Path.Combine(project, "obj", "Debug", "net10.0", "qlora");
        string manifestPath = Path.Combine(obj, "tiny.qlora.json");
        WeightsQuantizerTests.AssertFolderMatchesSource(Path.Combine(obj, "tiny"), source, new QuantizationOptions());
        string bin = Path.Combine(project, "bin", "Debug", "net10.0");
        foreach (string file in new[] { "tiny/model.safetensors", "tiny/config.json", "tiny/tokenizer.json", "tiny/generation_config.json", "tiny.qlora.json" })
        {
            Assert.True(File.Exists(Path.Combine(bin, file)), $"{file} was not copied to the output folder");
        }

        DateTime stamp = File.GetLastWriteTimeUtc(manifestPath);

        // A no-op rebuild must not run the task.
        (code, log) = DotnetBuild.Run(project);
        Assert.True(code == 0, log);
        Assert.DoesNotContain("QLoRA: quantizing", log);
        Assert.Equal(stamp, File.GetLastWriteTimeUtc(manifestPath));

        // Touching a weights file re-runs it.
        File.SetLastWriteTimeUtc(Path.Combine(project, "weights", "tiny", "model.safetensors"), DateTime.UtcNow.AddSeconds(2));
        (code, log) = DotnetBuild.Run(project);
        Assert.True(code == 0, log);
        Assert.Contains("QLoRA: quantizing 'tiny'", log);

        // Editing a file copied beside the model (the tokenizer) re-runs it too, so the copy is never stale.
        File.SetLastWriteTimeUtc(Path.Combine(project, "weights", "tiny", "tokenizer.json"), DateTime.UtcNow.AddSeconds(4));
        (code, log) = DotnetBuild.Run(project);
        Assert.True(code == 0, log);
        Assert.Contains("QLoRA: quantizing 'tiny'", log);

        // An IDE design-time build never quantizes, even with changed settings.
        (code, log) = DotnetBuild.Run(project, "-p:DesignTimeBuild=true", "-p:QLoRABlockSize=256");
        Assert.True(code == 0, log);
        Assert.DoesNotContain("QLoRA: quantizing", log);

        // Changing item metadata (BlockSize) re-runs it, and the new block size lands in the files.
        (code, log) = DotnetBuild.Run(project, "-p:QLoRABlockSize=128");
        Assert.True(code == 0, log);
        Assert.Contains("QLoRA: quantizing 'tiny'", log);
        Assert.Equal(128, WeightsManifest.Read(manifestPath).Tensors["model.layers.0.mlp.up_proj.weight"].BlockSize);
        WeightsQuantizerTests.AssertFolderMatchesSource(Path.Combine(obj, "tiny"), source, new QuantizationOptions(BlockSize: 128));
    }

    [Fact]
    public void AFolderIncludeStandsForTheCheckpointInItAndAnEmptyFolderIsAnError()
    {
        string project = DotnetBuild.WriteProject(Directory.CreateTempSubdirectory("qlora-e2e-").FullName, """<QLoRAWeights Include="weights/tiny" />""");
        TinyCheckpoint.Write(Path.Combine(project, "weights", "tiny"));
        (int code, string log) = DotnetBuild.Run(project);
        Assert.True(code == 0, log);
        Assert.Contains("QLoRA: quantizing 'tiny'", log);   // named after the folder, config.json found inside it
        Assert.True(File.Exists(Path.Combine(project, "bin", "Debug", "net10.0", "tiny", "model.safetensors")));

        // Keep="none" keeps nothing: lm_head is quantized as well (Keep="" would mean the defaults).
        File.WriteAllText(Path.Combine(project, "Model.csproj"), File.ReadAllText(Path.Combine(project, "Model.csproj")).Replace("Include=\"weights/tiny\"", "Include=\"weights/tiny\" Keep=\"none\"", StringComparison.Ordinal));
        (code, log) = DotnetBuild.Run(project);
        Assert.True(code == 0, log);
        var manifest = WeightsManifest.Read(Path.Combine(project, "obj", "Debug", "net10.0", "qlora", "tiny.qlora.json"));
        Assert.Equal("nf4", manifest.Tensors["lm_head.weight"].Stored);

        Directory.CreateDirectory(Path.Combine(project, "weights", "empty"));
        File.WriteAllText(Path.Combine(project, "Model.csproj"), File.ReadAllText(Path.Combine(project, "Model.csproj")).Replace("weights/tiny", "weights/empty", StringComparison.Ordinal));
        (code, log) = DotnetBuild.Run(project);
        Assert.NotEqual(0, code);
        Assert.Contains("QLR1011", log);
        Assert.Contains("weights/empty", log);
    }

    [Fact]
    public void AGlobThatMatchesNoFileIsAnErrorNamingThePatternAndItsLine()
    {
        string project = DotnetBuild.WriteProject(Directory.CreateTempSubdirectory("qlora-e2e-").FullName, """<QLoRAWeights Include="weights/tiny/*.safetensor" />""");
        TinyCheckpoint.Write(Path.Combine(project, "weights", "tiny"));
        (int code, string log) = DotnetBuild.Run(project);
        Assert.NotEqual(0, code);
        int line = Array.FindIndex(File.ReadAllLines(Path.Combine(project, "Model.csproj")), l => l.Contains("QLoRAWeights", StringComparison.Ordinal)) + 1;
        Assert.Contains($"Model.csproj({line},", log);
        Assert.Contains("error QLR1012", log);
        Assert.Contains("'weights/tiny/*.safetensor' matches no file", log);
        Assert.DoesNotContain("QLoRA: quantizing", log);

        // Fixed, it builds; a glob under a Condition is the build's own business and is not second-guessed.
        File.WriteAllText(Path.Combine(project, "Model.csproj"), File.ReadAllText(Path.Combine(project, "Model.csproj"))
            .Replace("*.safetensor\"", "*.safetensors\"", StringComparison.Ordinal)
            .Replace("</ItemGroup>", "<QLoRAWeights Include=\"other/*.safetensors\" Condition=\"'$(UseOther)' == 'true'\" /></ItemGroup>", StringComparison.Ordinal));
        (code, log) = DotnetBuild.Run(project);
        Assert.True(code == 0, log);
        Assert.Contains("QLoRA: quantizing 'tiny'", log);
    }

    [Fact]
    public void CorruptCheckpointFailsWithACodeAndTheFileAndRecoversAfterTheFix()
    {
        string project = DotnetBuild.WriteProject(Directory.CreateTempSubdirectory("qlora-e2e-").FullName, Item);
        string weights = Path.Combine(project, "weights", "tiny");
        TinyCheckpoint.Write(weights);
        string model = Path.Combine(weights, "model.safetensors");
        byte[] good = File.ReadAllBytes(model);
        File.WriteAllBytes(model, good[..^7]);

        (int code, string log) = DotnetBuild.Run(project);
        Assert.NotEqual(0, code);
        Assert.Contains("error QLR1002", log);
        Assert.Contains(model, log);
        string obj = Path.Combine(project, "obj", "Debug", "net10.0", "qlora");
        Assert.False(File.Exists(Path.Combine(obj, "tiny.qlora.json")));
        Assert.False(Directory.Exists(Path.Combine(obj, "tiny")));
        Assert.DoesNotContain(Directory.GetFileSystemEntries(obj), e => e.EndsWith(".tmp", StringComparison.Ordinal));

        File.WriteAllBytes(model, good);
        (code, log) = DotnetBuild.Run(project);
        Assert.True(code == 0, log);
        Assert.True(File.Exists(Path.Combine(obj, "tiny.qlora.json")));
    }

    [Fact]
    public void InvalidMetadataAndConfigMismatchAreBuildErrors()
    {
        string project = DotnetBuild.WriteProject(
            Directory.CreateTempSubdirectory("qlora-e2e-").FullName,
            """<QLoRAWeights Include="weights/tiny/*.safetensors" QuantType="nf3" />""");
        TinyCheckpoint.Write(Path.Combine(project, "weights", "tiny"));
        (int code, string log) = DotnetBuild.Run(project);
        Assert.NotEqual(0, code);
        Assert.Contains("error QLR1007", log);
        Assert.Contains("nf3", log);

        File.WriteAllText(Path.Combine(project, "weights", "tiny", "config.json"), TinyCheckpoint.ConfigJson().Replace("\"hidden_size\": 64", "\"hidden_size\": 96", StringComparison.Ordinal));
        File.WriteAllText(Path.Combine(project, "Model.csproj"), File.ReadAllText(Path.Combine(project, "Model.csproj")).Replace("QuantType=\"nf3\"", "", StringComparison.Ordinal));
        (code, log) = DotnetBuild.Run(project);
        Assert.NotEqual(0, code);
        Assert.Contains("error QLR1005", log);
        Assert.Contains("'lm_head.weight' has shape [100, 64]", log);
    }

    [Fact]
    public void LoftQMetadataWritesTheInitialAdapterBesideTheAdjustedBaseAndBadValuesAreErrors()
    {
        string project = DotnetBuild.WriteProject(Directory.CreateTempSubdirectory("qlora-e2e-").FullName, """<QLoRAWeights Include="weights/tiny" LoftQRank="4" LoftQAlpha="8" />""");
        TinyCheckpoint.Write(Path.Combine(project, "weights", "tiny"));
        (int code, string log) = DotnetBuild.Run(project);
        Assert.True(code == 0, log);
        string adapter = Path.Combine(project, "bin", "Debug", "net10.0", "tiny", "loftq_init");
        Assert.True(File.Exists(Path.Combine(adapter, "adapter_model.safetensors")), log);
        Assert.Equal(4, QLoRA.Core.Peft.LoraAdapter.Load(adapter).Config.R);

        File.WriteAllText(Path.Combine(project, "Model.csproj"), File.ReadAllText(Path.Combine(project, "Model.csproj")).Replace("LoftQRank=\"4\"", "LoftQRank=\"four\"", StringComparison.Ordinal));
        (code, log) = DotnetBuild.Run(project);
        Assert.NotEqual(0, code);
        Assert.Contains("error QLR1007", log);
        Assert.Contains("LoftQRank 'four'", log);
    }
}
