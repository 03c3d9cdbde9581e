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
        var start = new ProcessStartInfo(DotnetBuild.Dotnet)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            WorkingDirectory = RepositoryRoot,
        };
        foreach (string arg in new[] { "pack", "sdk/QLoRA.Sdk/QLoRA.Sdk.csproj", "-c", configuration, "-o", Feed, $"-p:Version={Version}", "-nodeReuse:false", "--disable-build-servers", "-nologo" })
        {
            start.ArgumentList.Add(arg);
        }

        start.Environment["MSBUILDDISABLENODEREUSE"] = "1";
        using Process process = Process.Start(start)!;
        string output = process.StandardOutput.ReadToEnd() + process.StandardError.ReadToEnd();
        process.WaitForExit();
        if (process.ExitCode != 0)
        {
            throw new InvalidOperationException($"dotnet pack failed:\n{output}");
        }
    }

    public string RepositoryRoot { get; }

    public string WorkDirectory { get; }

    public string Feed { get; }

    public string Packages { get; }

    public string Version { get; }

    /// <summary>nuget.config naming only the private feed: restores are offline.</summary>
    public string NuGetConfig => $"""<configuration><packageSources><clear /><add key="local" value="{Feed}" /></packageSources></configuration>""";

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
