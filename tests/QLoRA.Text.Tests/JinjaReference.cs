using System.Diagnostics;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace QLoRA.Text.Tests;

/// <summary>Runs Python's jinja2 (with transformers' settings) on a batch of render cases: the independent reference.</summary>
internal static class JinjaReference
{
    public sealed record Result(string? Text, string? Error, string? Message);

    public static List<Result> Render(JsonArray cases)
    {
        string script = Path.Combine(AppContext.BaseDirectory, "Reference", "render_templates.py");
        var psi = new ProcessStartInfo(Environment.GetEnvironmentVariable("QLORA_PYTHON") ?? "python3", $"\"{script}\"")
        {
            RedirectStandardInput = true,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            StandardInputEncoding = new System.Text.UTF8Encoding(false),
            StandardOutputEncoding = System.Text.Encoding.UTF8,
        };
        psi.Environment["PYTHONIOENCODING"] = "utf-8";
        using var p = Process.Start(psi) ?? throw new InvalidOperationException("cannot start python3");
        var stderrTask = p.StandardError.ReadToEndAsync();
        var stdoutTask = p.StandardOutput.ReadToEndAsync();
        p.StandardInput.Write(cases.ToJsonString());
        p.StandardInput.Close();
        p.WaitForExit();
        string stdout = stdoutTask.Result;
        if (p.ExitCode != 0)
            Assert.Fail($"python3 jinja2 reference failed (exit {p.ExitCode}); is jinja2 installed (python3 -m pip install jinja2, or apt-get install python3-jinja2)?\n{stderrTask.Result}");
        var results = new List<Result>();
        foreach (var r in JsonDocument.Parse(stdout).RootElement.EnumerateArray())
            results.Add(new Result(r.TryGetProperty("text", out var t) ? t.GetString() : null,
                r.TryGetProperty("error", out var e) ? e.GetString() : null,
                r.TryGetProperty("message", out var m) ? m.GetString() : null));
        return results;
    }
}
