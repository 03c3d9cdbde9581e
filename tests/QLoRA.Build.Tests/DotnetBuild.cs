using System.Diagnostics;

namespace QLoRA.Build.Tests;

/// <summary>Runs a real `dotnet build` (no node reuse, no build servers) and captures its log.</summary>
internal static class DotnetBuild
{
    /// <summary>The dotnet host running the tests, or the one on PATH.</summary>
    public static string Dotnet =>
        Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") is { Length: > 0 } host && File.Exists(host) ? host : "dotnet";

    public static (int ExitCode, string Log) Run(string projectDirectory, params string[] extraArgs) => Run(projectDirectory, extraArgs, []);

    /// <summary>Runs `dotnet build` (or, when the first argument is a verb such as publish, that verb).</summary>
    public static (int ExitCode, string Log) Run(string projectDirectory, string[] extraArgs, params (string Name, string Value)[] environment)
    {
        var start = new ProcessStartInfo(Dotnet)
        {
            WorkingDirectory = projectDirectory,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        bool verb = extraArgs.Length > 0 && extraArgs[0] is "publish" or "pack" or "build";
        string[] head = verb ? [extraArgs[0]] : ["build"];
        foreach (string arg in head.Concat(["-nologo", "-v:n", "-nodeReuse:false", "--disable-build-servers", "-p:UseSharedCompilation=false"]).Concat(verb ? extraArgs[1..] : extraArgs))
        {
            start.ArgumentList.Add(arg);
        }

        start.Environment["MSBUILDDISABLENODEREUSE"] = "1";
        start.Environment["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1";
        start.Environment["DOTNET_NOLOGO"] = "1";
        foreach ((string name, string value) in environment)
        {
            start.Environment[name] = value;
        }

        // The test runner's own MSBuild settings must not leak into the child build.
        foreach (string variable in new[] { "MSBuildExtensionsPath", "MSBuildSDKsPath", "MSBUILD_EXE_PATH" })
        {
            start.Environment.Remove(variable);
        }

        using Process process = Process.Start(start)!;
        Task<string> stdout = process.StandardOutput.ReadToEndAsync();
        Task<string> stderr = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(TimeSpan.FromMinutes(5)))
        {
            process.Kill(entireProcessTree: true);
            throw new TimeoutException($"dotnet build in {projectDirectory} did not finish in 5 minutes.");
        }

        return (process.ExitCode, stdout.Result + stderr.Result);
    }

    /// <summary>A class library that imports the task's props/targets from this test's output folder.</summary>
    public static string WriteProject(string directory, string weightsItem)
    {
        string build = Path.Combine(AppContext.BaseDirectory, "build");
        string tasks = Path.Combine(AppContext.BaseDirectory, "QLoRA.Build.Tasks.dll");
        Directory.CreateDirectory(directory);
        File.WriteAllText(Path.Combine(directory, "Model.csproj"), $"""
            <Project Sdk="Microsoft.NET.Sdk">
              <Import Project="{build}/QLoRA.Build.Tasks.props" />
              <PropertyGroup>
                <TargetFramework>net10.0</TargetFramework>
                <QLoRATasksAssembly>{tasks}</QLoRATasksAssembly>
                <QLoRABlockSize Condition="'$(QLoRABlockSize)' == ''">64</QLoRABlockSize>
              </PropertyGroup>
              <ItemGroup>
                {weightsItem}
              </ItemGroup>
              <Import Project="{build}/QLoRA.Build.Tasks.targets" />
            </Project>
            """);
        File.WriteAllText(Path.Combine(directory, "Class1.cs"), "namespace Model; public static class Marker { }");
        File.WriteAllText(Path.Combine(directory, "nuget.config"), "<configuration><packageSources><clear /></packageSources></configuration>");
        return directory;
    }
}
