namespace QLoRA.Build.Tests;

/// <summary>The packed QLoRA.Sdk used the two ways users use it: as a project SDK and as a PackageReference.</summary>
public class PackedSdkTests(PackedSdkFixture sdk) : IClassFixture<PackedSdkFixture>
{
    private string WriteProject(string projectXml)
    {
        string dir = Path.Combine(sdk.WorkDirectory, Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(dir);
        File.WriteAllText(Path.Combine(dir, "App.csproj"), projectXml);
        File.WriteAllText(Path.Combine(dir, "nuget.config"), sdk.NuGetConfig);
        File.WriteAllText(Path.Combine(dir, "Class1.cs"), "namespace App; public static class Marker { }");
        TinyCheckpoint.Write(Path.Combine(dir, "weights", "llama"));
        return dir;
    }

    private const string Items = """
          <ItemGroup>
            <QLoRAWeights Include="weights/llama/*.safetensors" Config="weights/llama/config.json" OutputName="llama" />
          </ItemGroup>
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
        (int code, string log) = DotnetBuild.Run(dir, ["-p:RestorePackagesPath=" + sdk.Packages], ("NUGET_PACKAGES", sdk.Packages));
        Assert.True(code == 0, log);
        Assert.Contains("QLoRA: quantizing 'llama'", log);
        Assert.True(File.Exists(Path.Combine(dir, "bin", "Debug", "net10.0", "llama", "model.safetensors")));
        Assert.True(File.Exists(Path.Combine(sdk.Packages, "qlora.sdk", sdk.Version, "tasks", "net10.0", "QLoRA.Build.Tasks.dll")), "the SDK came from the private feed");

        (code, log) = DotnetBuild.Run(dir, ["publish", "-o", Path.Combine(dir, "pub"), "-p:RestorePackagesPath=" + sdk.Packages], ("NUGET_PACKAGES", sdk.Packages));
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
}
