namespace QLoRA.Build.Tests;

/// <summary>The packed QLoRA.Sdk used the two ways users use it: as a project SDK and as a PackageReference.</summary>
public class PackedSdkTests(PackedSdkFixture sdk) : IClassFixture<PackedSdkFixture>
{
    private string WriteProject(string projectXml)
    {
        string dir = Path.Combine(sdk.WorkDirectory, Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(dir);
        File.WriteAllText(Path.Combine(dir, "App.csproj"), projectXml);
        File.WriteAllText(Path.Combine(dir, "nuget.config"), sdk.NuGetConfigWithRestoredPackages);
        File.WriteAllText(Path.Combine(dir, "Class1.cs"), "namespace App; public static class Marker { }");
        TinyCheckpoint.Write(Path.Combine(dir, "weights", "llama"));
        return dir;
    }

    private const string Items = """
          <ItemGroup>
            <QLoRAWeights Include="weights/llama/*.safetensors" Config="weights/llama/config.json" OutputName="llama" />
          </ItemGroup>
        """;

    // A full Llama block over the tiny checkpoint's names, linked to its weights: compiled by the generator the SDK brings.
    private const string Model = """
        using QLoRA.Modeling;
        using QLoRA.Runtime.Layers;

        namespace App;

        [CausalLM(Weights = "llama")]
        public partial class Llama
        {
            [Embedding("vocab_size", "hidden_size"), HfName("model.embed_tokens")] public partial EmbeddingLayer Embed { get; }
            [Stack("num_hidden_layers"), HfName("model.layers")] public partial Layer[] Layers { get; }
            [RmsNorm("hidden_size"), HfName("model.norm")] public partial RmsNormLayer Norm { get; }
            [Linear("hidden_size", "vocab_size")] public partial Linear LmHead { get; }
        }

        [Block]
        public partial class Layer
        {
            [RmsNorm("hidden_size")] public partial RmsNormLayer InputLayernorm { get; }
            [RmsNorm("hidden_size")] public partial RmsNormLayer PostAttentionLayernorm { get; }
            [Linear("hidden_size", "q_dim"), Nf4, LoRA(Rank = 8), HfName("self_attn.q_proj")] public partial QuantizedLinear QProj { get; }
            [Linear("hidden_size", "kv_dim"), Nf4, LoRA(Rank = 8), HfName("self_attn.k_proj")] public partial QuantizedLinear KProj { get; }
            [Linear("hidden_size", "kv_dim"), Nf4, LoRA(Rank = 8), HfName("self_attn.v_proj")] public partial QuantizedLinear VProj { get; }
            [Linear("q_dim", "hidden_size"), Nf4, LoRA(Rank = 8), HfName("self_attn.o_proj")] public partial QuantizedLinear OProj { get; }
            [Linear("hidden_size", "intermediate_size"), Nf4, HfName("mlp.gate_proj")] public partial QuantizedLinear GateProj { get; }
            [Linear("hidden_size", "intermediate_size"), Nf4, HfName("mlp.up_proj")] public partial QuantizedLinear UpProj { get; }
            [Linear("intermediate_size", "hidden_size"), Nf4, HfName("mlp.down_proj")] public partial QuantizedLinear DownProj { get; }
        }
        """;

    [Fact]
    public void ProjectSdkQuantizesWeightsAndPublishesThem()
    {
        string dir = WriteProject($"""
            <Project Sdk="QLoRA.Sdk/{sdk.Version}">
              <PropertyGroup><TargetFramework>net10.0</TargetFramework></PropertyGroup>
            {Items}
            </Project>
            """);
        File.WriteAllText(Path.Combine(dir, "Model.cs"), Model);
        (int code, string log) = DotnetBuild.Run(dir, ["-p:RestorePackagesPath=" + sdk.Packages], ("NUGET_PACKAGES", sdk.Packages));
        Assert.True(code == 0, log);
        Assert.Contains("QLoRA: quantizing 'llama'", log);
        Assert.True(File.Exists(Path.Combine(dir, "bin", "Debug", "net10.0", "llama", "model.safetensors")));
        Assert.True(File.Exists(Path.Combine(sdk.Packages, "qlora.sdk", sdk.Version, "tasks", "net10.0", "QLoRA.Build.Tasks.dll")), "the SDK came from the private feed");
        Assert.True(Directory.Exists(Path.Combine(sdk.Packages, "qlora.runtime", sdk.Version)), "the SDK brought the runtime and generator");

        // The generator checks the definition against the weights the build just quantized.
        File.WriteAllText(Path.Combine(dir, "Model.cs"), Model.Replace("\"hidden_size\", \"kv_dim\"), Nf4, LoRA(Rank = 8), HfName(\"self_attn.k_proj\")", "\"hidden_size\", 48), Nf4, LoRA(Rank = 8), HfName(\"self_attn.k_proj\")", StringComparison.Ordinal));
        (int failed, string failure) = DotnetBuild.Run(dir, ["-p:RestorePackagesPath=" + sdk.Packages], ("NUGET_PACKAGES", sdk.Packages));
        Assert.NotEqual(0, failed);
        Assert.Contains("error QLR0011", failure);
        File.WriteAllText(Path.Combine(dir, "Model.cs"), Model);

        (code, log) = DotnetBuild.Run(dir, ["publish", "-o", Path.Combine(dir, "pub"), "-p:RestorePackagesPath=" + sdk.Packages], ("NUGET_PACKAGES", sdk.Packages));
        Assert.True(File.Exists(Path.Combine(dir, "pub", "QLoRA.Runtime.dll")), "the runtime is published with the app");
        Assert.True(code == 0, log);
        Assert.True(File.Exists(Path.Combine(dir, "pub", "llama", "model.safetensors")), "weights are published");
        Assert.True(File.Exists(Path.Combine(dir, "pub", "llama.qlora.json")));
    }

    [Fact]
    public void PackageReferenceWorksToo()
    {
        string dir = WriteProject($"""
            <Project Sdk="Microsoft.NET.Sdk">
              <PropertyGroup><TargetFramework>net10.0</TargetFramework></PropertyGroup>
              <ItemGroup><PackageReference Include="QLoRA.Sdk" Version="{sdk.Version}" /></ItemGroup>
            {Items}
            </Project>
            """);
        (int code, string log) = DotnetBuild.Run(dir, ["-p:RestorePackagesPath=" + sdk.Packages], ("NUGET_PACKAGES", sdk.Packages));
        Assert.True(code == 0, log);
        Assert.Contains("QLoRA: quantizing 'llama'", log);
        Assert.True(File.Exists(Path.Combine(dir, "bin", "Debug", "net10.0", "llama", "config.json")));
    }

    // An app's loops start fully optimized (the CPU schedules would run tier-0 code for their first seconds); a project
    // that sets the property itself keeps its choice.
    [Theory]
    [InlineData("Exe", "", "false")]
    [InlineData("Exe", "<TieredCompilationQuickJitForLoops>true</TieredCompilationQuickJitForLoops>", "true")]
    public void AppsCompileLoopsFullyOptimizedAtFirstCall(string outputType, string property, string expected)
    {
        string dir = WriteProject($"""
            <Project Sdk="Microsoft.NET.Sdk">
              <PropertyGroup><TargetFramework>net10.0</TargetFramework><OutputType>{outputType}</OutputType>{property}</PropertyGroup>
              <ItemGroup><PackageReference Include="QLoRA.Sdk" Version="{sdk.Version}" /></ItemGroup>
            </Project>
            """);
        File.WriteAllText(Path.Combine(dir, "Program.cs"), "return 0;");
        (int code, string log) = DotnetBuild.Run(dir, ["-p:RestorePackagesPath=" + sdk.Packages], ("NUGET_PACKAGES", sdk.Packages));
        Assert.True(code == 0, log);
        string config = File.ReadAllText(Path.Combine(dir, "bin", "Debug", "net10.0", "App.runtimeconfig.json"));
        Assert.Contains($"\"System.Runtime.TieredCompilation.QuickJitForLoops\": {expected}", config);
    }
}
