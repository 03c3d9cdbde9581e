using System.Diagnostics;
using System.Globalization;
using System.Text.Json.Nodes;

namespace QLoRA.Bench;

/// <summary>Runs a PyTorch peer script of bench/cpu with Debian's python3 and reads its JSON answer.</summary>
internal static class PythonPeer
{
    /// <summary>The script's JSON output, or null (with the reason printed) when python3-torch is missing or the script fails.</summary>
    public static JsonNode? Run(string script, string? stdin, params object[] args)
    {
        string path = Path.Combine(CpuGemmBenchmark.FindRepo(), "bench", "cpu", script);
        try
        {
            using var process = Process.Start(new ProcessStartInfo("/usr/bin/python3", [path, .. args.Select(a => Convert.ToString(a, CultureInfo.InvariantCulture)!)])
            {
                RedirectStandardInput = stdin is not null,
                RedirectStandardOutput = true,
                RedirectStandardError = true,
            })!;
            if (stdin is not null)
            {
                process.StandardInput.Write(stdin);
                process.StandardInput.Close();
            }

            string output = process.StandardOutput.ReadToEnd();
            string errors = process.StandardError.ReadToEnd();
            process.WaitForExit();
            if (process.ExitCode != 0)
            {
                Console.WriteLine($"PyTorch peer {script} failed (apt-get install python3-torch libopenblas0-pthread): {errors.Trim().Split('\n').LastOrDefault()}");
                return null;
            }

            return JsonNode.Parse("[" + string.Join(",", output.Split('\n', StringSplitOptions.RemoveEmptyEntries)) + "]");
        }
        catch (System.ComponentModel.Win32Exception e)
        {
            Console.WriteLine($"PyTorch peer not run ({e.Message}): apt-get install python3-torch libopenblas0-pthread");
            return null;
        }
    }
}
