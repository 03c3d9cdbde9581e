using System.Diagnostics;

namespace QLoRA.Build.Tests;

/// <summary>
/// The packed template pack: `dotnet new qlora-model` and `dotnet new qlora-finetune` installed, instantiated with
/// options and built offline; the fine-tuning app trains a few steps on its tiny default model and chats.
/// </summary>
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

    [Fact]
    public void QloraFinetuneTemplateTrainsAndChatsOffline()
    {
        string hive = Path.Combine(sdk.WorkDirectory, "hive-finetune");
        string templates = Directory.GetFiles(sdk.Feed, "QLoRA.Templates.*.nupkg").Single();
        PackedSdkFixture.Run(sdk.WorkDirectory, "new", "install", templates, "--debug:custom-hive", hive);
        string output = Path.Combine(sdk.WorkDirectory, "Bot");
        PackedSdkFixture.Run(sdk.WorkDirectory, "new", "qlora-finetune", "-n", "Bot", "-o", output, "--rank", "8", "--alpha", "16", "--targets", "q_proj,v_proj,down_proj",
            "--sdkVersion", sdk.Version, "--debug:custom-hive", hive);
        string program = File.ReadAllText(Path.Combine(output, "Program.cs"));
        Assert.Contains("public const int Rank = 8", program);
        Assert.Contains("public const int Alpha = 16", program);
        Assert.Contains("\"q_proj,v_proj,down_proj\"", program);
        Assert.Contains("namespace Bot;", File.ReadAllText(Path.Combine(output, "BotModel.cs")));

        File.WriteAllText(Path.Combine(output, "nuget.config"), sdk.NuGetConfigWithRestoredPackages);
        (int exit, string log) = DotnetBuild.Run(output, ["-p:RestorePackagesPath=" + sdk.Packages], ("NUGET_PACKAGES", sdk.Packages));
        Assert.True(exit == 0, log);
        string app = Path.Combine(output, "bin", "Debug", "net10.0", "Bot.dll");

        (int trained, string trainLog) = RunApp(output, app, "", "train", "--steps", "3");
        Assert.True(trained == 0, trainLog);
        Assert.Contains("tiny random model", trainLog);
        Assert.True(trainLog.Contains("step 3/3", StringComparison.Ordinal), trainLog);
        string adapterConfig = File.ReadAllText(Path.Combine(output, "out", "adapter", "adapter_config.json"));
        Assert.Contains("\"r\": 8", adapterConfig);
        Assert.Contains("down_proj", adapterConfig);

        (int chatted, string chatLog) = RunApp(output, app, "Who are you?\n/exit\n", "chat");
        Assert.True(chatted == 0, chatLog);
        Assert.Contains("fine-tuned adapter", chatLog);
        Assert.Equal(3, chatLog.Split("> ").Length); // one answer, then /exit
    }

    private static (int ExitCode, string Output) RunApp(string directory, string app, string input, params string[] args)
    {
        var start = new ProcessStartInfo(DotnetBuild.Dotnet)
        {
            WorkingDirectory = directory, RedirectStandardInput = true, RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false,
        };
        start.ArgumentList.Add(app);
        foreach (string arg in args)
        {
            start.ArgumentList.Add(arg);
        }

        start.Environment["QLORA_DEVICE"] = "cpu";
        using Process process = Process.Start(start)!;
        process.StandardInput.Write(input);
        process.StandardInput.Close();
        Task<string> stdout = process.StandardOutput.ReadToEndAsync();
        Task<string> stderr = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(TimeSpan.FromMinutes(3)))
        {
            process.Kill(entireProcessTree: true);
            throw new TimeoutException($"{app} {string.Join(' ', args)} did not finish in 3 minutes.");
        }

        return (process.ExitCode, stdout.Result + stderr.Result);
    }
}
