using System.Diagnostics;
using System.IO.Compression;
using System.Text;

namespace QLoRA.Build.Tests;

/// <summary>Packages carry SourceLink: packed from a clone whose remote is on GitHub, the symbol package's PDB maps sources to it.</summary>
public class SourceLinkTests
{
    private static void Git(string directory, params string[] args)
    {
        var start = new ProcessStartInfo("git") { WorkingDirectory = directory, RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (string arg in args)
        {
            start.ArgumentList.Add(arg);
        }

        using Process process = Process.Start(start)!;
        string output = process.StandardError.ReadToEnd() + process.StandardOutput.ReadToEnd();
        process.WaitForExit();
        Assert.True(process.ExitCode == 0, $"git {string.Join(' ', args)}: {output}");
    }

    [Fact]
    public void SymbolPackagesMapSourcesToTheRepositoryRemote()
    {
        string? root = AppContext.BaseDirectory;
        while (root is not null && !File.Exists(Path.Combine(root, "QLoRA.Sdk.sln")))
        {
            root = Path.GetDirectoryName(root);
        }

        string work = Directory.CreateTempSubdirectory("qlora-sourcelink-").FullName;
        string clone = Path.Combine(work, "repo");
        Git(work, "clone", "-q", root!, clone);
        Git(clone, "remote", "set-url", "origin", "https://github.com/qlora-sdk/qlora-sdk.git");
        string feed = Path.Combine(work, "feed");
        PackedSdkFixture.Run(clone, "pack", "src/QLoRA.Core/QLoRA.Core.csproj", "-o", feed, "-p:VersionSuffix=sourcelink", "-nodeReuse:false", "--disable-build-servers", "-nologo");

        using ZipArchive symbols = ZipFile.OpenRead(Directory.GetFiles(feed, "*.snupkg").Single());
        ZipArchiveEntry pdb = symbols.Entries.Single(e => e.FullName.EndsWith("QLoRA.Core.pdb", StringComparison.Ordinal));
        using var reader = new StreamReader(pdb.Open(), Encoding.Latin1);
        Assert.Contains("https://raw.githubusercontent.com/qlora-sdk/qlora-sdk/", reader.ReadToEnd());
        using ZipArchive package = ZipFile.OpenRead(Directory.GetFiles(feed, "*.nupkg").Single());
        using var nuspec = new StreamReader(package.Entries.Single(e => e.FullName.EndsWith(".nuspec", StringComparison.Ordinal)).Open());
        Assert.Contains("<repository type=\"git\" url=\"https://github.com/qlora-sdk/qlora-sdk.git\"", nuspec.ReadToEnd());
    }
}
