namespace QLoRA.Build.Tests;

/// <summary>`dotnet new qlora-model` from the packed template pack: install, instantiate with options, build offline.</summary>
public class TemplateTests(PackedSdkFixture sdk) : IClassFixture<PackedSdkFixture>
{
    [Fact]
    public void QloraModelTemplateInstantiatesAndBuilds()
    {
        string hive = Path.Combine(sdk.WorkDirectory, "hive");
        string templates = Directory.GetFiles(sdk.Feed, "QLoRA.Templates.*.nupkg").Single();
        PackedSdkFixture.Run(sdk.WorkDirectory, "new", "install", templates, "--debug:custom-hive", hive);
        string output = Path.Combine(sdk.WorkDirectory, "SupportModel");
        PackedSdkFixture.Run(sdk.WorkDirectory, "new", "qlora-model", "-n", "SupportModel", "-o", output, "--rank", "8", "--quantType", "Fp4", "--blockSize", "128",
            "--sdkVersion", sdk.Version, "--debug:custom-hive", hive);

        string code = File.ReadAllText(Path.Combine(output, "SupportModel.cs"));
        Assert.Contains("public partial class SupportModel", code);
        Assert.Contains("Fp4(BlockSize = 128)", code);
        Assert.Contains("LoRA(Rank = 8, Alpha = 32)", code);
        Assert.Contains($"Version=\"{sdk.Version}\"", File.ReadAllText(Path.Combine(output, "SupportModel.csproj")));

        File.WriteAllText(Path.Combine(output, "nuget.config"), sdk.NuGetConfigWithRestoredPackages);
        (int exit, string log) = DotnetBuild.Run(output, ["-p:RestorePackagesPath=" + sdk.Packages], ("NUGET_PACKAGES", sdk.Packages));
        Assert.True(exit == 0, log);
        Assert.True(File.Exists(Path.Combine(output, "bin", "Debug", "net10.0", "SupportModel.dll")));
        Assert.True(Directory.Exists(Path.Combine(sdk.Packages, "qlora.runtime", sdk.Version)), "QLoRA.Runtime came from the private feed");
    }
}
