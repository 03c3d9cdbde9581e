using System.Diagnostics;

namespace QLoRA.Build.Tests;

/// <summary>
/// Packs QLoRA.Sdk once per test run into a private feed with a unique prerelease version, and gives builds a fresh
/// package folder, so no stale copy from the global package cache can be used.
/// </summary>
public sealed class PackedSdkFixture : IDisposable
{
    public PackedSdkFixture()
    {
        string? root = AppContext.BaseDirectory;
        while (root is not null && !File.Exists(Path.Combine(root, "QLoRA.Sdk.sln")))
        {
            root = Path.GetDirectoryName(root);
        }

        RepositoryRoot = root ?? throw new InvalidOperationException("QLoRA.Sdk.sln not found above the test folder.");
        WorkDirectory = Directory.CreateTempSubdirectory("qlora-sdk-").FullName;
        Feed = Path.Combine(WorkDirectory, "feed");
        Packages = Path.Combine(WorkDirectory, "packages");
        Version = $"0.1.0-e2e.{DateTime.UtcNow:yyyyMMddHHmmssfff}";
#if DEBUG
        const string configuration = "Debug";
#else
        const string configuration = "Release";
#endif
        foreach (string project in new[] { "sdk/QLoRA.Sdk/QLoRA.Sdk.csproj", "src/QLoRA.Core/QLoRA.Core.csproj", "src/QLoRA.Text/QLoRA.Text.csproj", "src/QLoRA.Runtime/QLoRA.Runtime.csproj", "templates/QLoRA.Templates.csproj" })
        {
            Run(RepositoryRoot, "pack", project, "-c", configuration, "-o", Feed, $"-p:Version={Version}", "-nodeReuse:false", "--disable-build-servers", "-nologo");
        }
    }

    /// <summary>Runs a dotnet command, throwing with its output on failure.</summary>
    public static string Run(string directory, params string[] args)
    {
        var start = new ProcessStartInfo(DotnetBuild.Dotnet)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            WorkingDirectory = directory,
        };
        foreach (string arg in args)
        {
            start.ArgumentList.Add(arg);
        }

        start.Environment["MSBUILDDISABLENODEREUSE"] = "1";
        start.Environment["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1";
        using Process process = Process.Start(start)!;
        Task<string> stdout = process.StandardOutput.ReadToEndAsync();
        string output = process.StandardError.ReadToEnd() + stdout.Result;
        process.WaitForExit();
        if (process.ExitCode != 0)
        {
            throw new InvalidOperationException($"dotnet {string.Join(' ', args)} failed:\n{output}");
        }

        return output;
    }

    public string RepositoryRoot { get; }

    public string WorkDirectory { get; }

    public string Feed { get; }

    public string Packages { get; }

    public string Version { get; }

    /// <summary>nuget.config naming only the private feed: restores are offline.</summary>
    public string NuGetConfig => $"""<configuration><packageSources><clear /><add key="local" value="{Feed}" /></packageSources></configuration>""";

    /// <summary>
    /// The private feed plus the machine's already-restored packages folder (for third-party packages such as ILGPU):
    /// still offline, and QLoRA.* can only come from the private feed.
    /// </summary>
    public string NuGetConfigWithRestoredPackages
    {
        get
        {
            string restored = Environment.GetEnvironmentVariable("NUGET_PACKAGES") is { Length: > 0 } p ? p : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".nuget", "packages");
            return $"""
                <configuration>
                  <packageSources><clear /><add key="local" value="{Feed}" /><add key="restored" value="{restored}" /></packageSources>
                  <packageSourceMapping>
                    <packageSource key="local"><package pattern="QLoRA.*" /></packageSource>
                    <packageSource key="restored"><package pattern="*" /></packageSource>
                  </packageSourceMapping>
                </configuration>
                """;
        }
    }

    public void Dispose()
    {
        try
        {
            Directory.Delete(WorkDirectory, recursive: true);
        }
        catch (IOException)
        {
        }
    }
}
