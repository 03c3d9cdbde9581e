using System.Diagnostics;
using System.Globalization;
using System.Text.RegularExpressions;

namespace QLoRA.Runtime.Tests;

/// <summary>
/// NVIDIA's PTX assembler as a test reference: assembles PTX for an sm_XX target as the driver's JIT would, and reads
/// its resource report (<c>-v</c>: registers, stack frame, spills). Found through QLORA_PTXAS, the cache
/// tests/tools/fetch-ptxas.sh fills, or PATH.
/// </summary>
internal static partial class Ptxas
{
    public const string Missing = "ptxas not found: run tests/tools/fetch-ptxas.sh (CUDA 11.8's ptxas from Debian, no GPU needed) or set QLORA_PTXAS";

    /// <summary>What ptxas said of one kernel: an error, or its resources.</summary>
    public sealed record Report(string? Error, int Registers, int StackBytes, int SpillBytes);

    public static string? Find()
    {
        string? configured = Environment.GetEnvironmentVariable("QLORA_PTXAS");
        if (!string.IsNullOrEmpty(configured))
        {
            return File.Exists(configured) ? configured : throw new FileNotFoundException($"QLORA_PTXAS names '{configured}', which does not exist.");
        }

        string cache = Environment.GetEnvironmentVariable("QLORA_PTXAS_CACHE") is { Length: > 0 } set ? set : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache", "qlora-ptxas");
        if (File.Exists(Path.Combine(cache, ".ok")) && File.Exists(Path.Combine(cache, "ptxas")))
        {
            return Path.Combine(cache, "ptxas");
        }

        return (Environment.GetEnvironmentVariable("PATH") ?? "").Split(Path.PathSeparator, StringSplitOptions.RemoveEmptyEntries)
            .Select(d => Path.Combine(d, "ptxas")).FirstOrDefault(File.Exists);
    }

    /// <summary>Assembles <paramref name="ptx"/> for <paramref name="arch"/> (e.g. "sm_90"), output discarded.</summary>
    /// <remarks>
    /// CUDA 11.8's ptxas reads PTX ISA up to 7.8; ILGPU's ISA 8.0 output uses nothing newer, so its version line is
    /// lowered to 7.8 for this assembler (a newer ptxas takes the text unchanged).
    /// </remarks>
    public static Report Assemble(string ptxas, string ptx, string arch)
    {
        string folder = Directory.CreateTempSubdirectory("qlora-ptxas-").FullName;
        try
        {
            string input = Path.Combine(folder, "kernel.ptx");
            File.WriteAllText(input, Version(ptxas) < 12 ? IsaLine().Replace(ptx, ".version 7.8", 1) : ptx);
            var start = new ProcessStartInfo(ptxas, ["-arch=" + arch, "-v", "-o", Path.Combine(folder, "kernel.cubin"), input])
            {
                RedirectStandardOutput = true,
                RedirectStandardError = true,
            };
            using Process process = Process.Start(start)!;
            Task<string> stdout = process.StandardOutput.ReadToEndAsync(), stderr = process.StandardError.ReadToEndAsync();
            if (!process.WaitForExit(TimeSpan.FromMinutes(2)))
            {
                process.Kill();
                return new Report("timed out after 2 minutes", 0, 0, 0);
            }

            string output = stdout.Result + stderr.Result;
            if (process.ExitCode != 0)
            {
                return new Report(output.Trim(), 0, 0, 0);
            }

            Match registers = RegistersLine().Match(output), stack = StackLine().Match(output);
            if (!registers.Success || !stack.Success)
            {
                return new Report("no resource report in ptxas's output: " + output.Trim(), 0, 0, 0);
            }

            return new Report(null, Int(registers.Groups[1]), Int(stack.Groups[1]), Int(stack.Groups[2]) + Int(stack.Groups[3]));
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }

    private static readonly Dictionary<string, int> Versions = [];

    private static int Version(string ptxas)
    {
        lock (Versions)
        {
            if (!Versions.TryGetValue(ptxas, out int major))
            {
                using Process process = Process.Start(new ProcessStartInfo(ptxas, ["--version"]) { RedirectStandardOutput = true })!;
                Match release = ReleaseLine().Match(process.StandardOutput.ReadToEnd());
                process.WaitForExit();
                major = release.Success ? Int(release.Groups[1]) : 0;
                Versions[ptxas] = major;
            }

            return major;
        }
    }

    private static int Int(Group g) => int.Parse(g.Value, CultureInfo.InvariantCulture);

    [GeneratedRegex(@"^\.version \d+\.\d+", RegexOptions.Multiline)]
    private static partial Regex IsaLine();

    [GeneratedRegex(@"Used (\d+) registers")]
    private static partial Regex RegistersLine();

    [GeneratedRegex(@"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")]
    private static partial Regex StackLine();

    [GeneratedRegex(@"release (\d+)\.\d+")]
    private static partial Regex ReleaseLine();
}
