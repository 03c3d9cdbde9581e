namespace QLoRA.Build.Tests;

/// <summary>
/// A real build of a project with QLoRAWeights and a model definition: the manifest the task writes reaches the source
/// generator as an AdditionalFile, so a definition that disagrees with the weights fails compilation.
/// </summary>
public class ModelCheckBuildTests
{
    private static string Generator()
    {
        string? root = AppContext.BaseDirectory;
        while (root is not null && !File.Exists(Path.Combine(root, "QLoRA.Sdk.sln")))
        {
            root = Path.GetDirectoryName(root);
        }

#if DEBUG
        const string configuration = "Debug";
#else
        const string configuration = "Release";
#endif
        return Path.Combine(root!, "src", "QLoRA.Generators", "bin", configuration, "netstandard2.0", "QLoRA.Generators.dll");
    }

    private static string Model(string upProjOut) => $$"""
        using QLoRA.Modeling;
        using QLoRA.Runtime.Layers;

        namespace App;

        [CausalLM(Weights = "tiny")]
        public partial class Tiny
        {
            [Embedding("vocab_size", "hidden_size"), HfName("model.embed_tokens")] public partial EmbeddingLayer Embed { get; }
            [Stack("num_hidden_layers"), HfName("model.layers")] public partial Block[] Layers { get; }
            [RmsNorm("hidden_size"), HfName("model.norm")] public partial RmsNormLayer Norm { get; }
            [Linear("hidden_size", "vocab_size")] public partial Linear LmHead { get; }
        }

        [Block]
        public partial class Block
        {
            [Linear("hidden_size", {{upProjOut}}), Nf4, LoRA(Rank = 8), HfName("mlp.up_proj")] public partial QuantizedLinear UpProj { get; }
        }
        """;

    [Fact]
    public void AMismatchedDefinitionFailsCompilationAndTheFixedOneBuilds()
    {
        string bin = AppContext.BaseDirectory;
        string references = $"""
            <Reference Include="QLoRA.Runtime"><HintPath>{bin}QLoRA.Runtime.dll</HintPath></Reference>
            <Reference Include="QLoRA.Core"><HintPath>{bin}QLoRA.Core.dll</HintPath></Reference>
            <Reference Include="ILGPU"><HintPath>{bin}ILGPU.dll</HintPath></Reference>
            <Analyzer Include="{Generator()}" />
            <QLoRAWeights Include="weights/tiny/*.safetensors" Config="weights/tiny/config.json" OutputName="tiny" />
            """;
        string project = DotnetBuild.WriteProject(Directory.CreateTempSubdirectory("qlora-model-").FullName, references);
        File.Delete(Path.Combine(project, "Class1.cs"));
        TinyCheckpoint.Write(Path.Combine(project, "weights", "tiny"));
        File.WriteAllText(Path.Combine(project, "Model.cs"), Model("96"));

        (int code, string log) = DotnetBuild.Run(project);
        Assert.NotEqual(0, code);
        Assert.Contains("error QLR0011", log);
        Assert.Contains("'model.layers.0.mlp.up_proj.weight' (Tiny.Layers[0].UpProj) has shape [128, 64] in weights 'tiny' but the model declares [96, 64]", log);

        File.WriteAllText(Path.Combine(project, "Model.cs"), Model("\"intermediate_size\""));
        (code, log) = DotnetBuild.Run(project);
        Assert.True(code == 0, log);
        Assert.DoesNotContain("QLoRA: quantizing", log); // the weights were already up to date
    }
}
