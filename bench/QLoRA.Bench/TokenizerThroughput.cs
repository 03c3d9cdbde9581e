using System.Text;
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Columns;
using BenchmarkDotNet.Reports;
using BenchmarkDotNet.Running;
using QLoRA.Text.Tokenization;

namespace QLoRA.Bench;

/// <summary>
/// Encode throughput of QLoRA.Text's tokenizer on ≥ 10 MB of mixed text (prose, code, numbers, CJK, emoji, accents)
/// next to the Hugging Face tokenizers library (Rust, through Tokenizers.DotNet) on the same tokenizer.json, same text
/// and same run: one thread, and all cores over 4 KB documents. Needs the real tokenizer files:
/// <c>tests/data/fetch-tokenizers.sh</c> (or QLORA_TOKENIZER_CACHE).
/// </summary>
[MemoryDiagnoser(displayGenColumns: false)]
public class TokenizerThroughput
{
    private HfTokenizer _ours = null!;
    private Tokenizers.DotNet.Tokenizer _rust = null!;
    private string[] _documents = [];

    /// <summary>UTF-8 bytes of the whole text (what one benchmark call encodes).</summary>
    public static long Bytes { get; private set; }

    [Params("llama3")]
    public string Model { get; set; } = "llama3";

    [GlobalSetup]
    public void Setup()
    {
        string cache = TokenizerCache.Folder;
        string dir = Path.Combine(cache, Model);
        if (!File.Exists(Path.Combine(dir, "tokenizer.json")))
            throw new FileNotFoundException($"{dir}/tokenizer.json is missing: run tests/data/fetch-tokenizers.sh");
        _ours = HfTokenizer.FromFolder(dir);
        _rust = new Tokenizers.DotNet.Tokenizer(vocabPath: Path.Combine(dir, "tokenizer.json"));
        _documents = MixedText(10_500_000);
        Bytes = _documents.Sum(d => (long)Encoding.UTF8.GetByteCount(d));
        // Same ids from both, or the comparison means nothing.
        foreach (var d in _documents.Take(50))
            if (!_ours.Encode(d, false).AsSpan().SequenceEqual(Array.ConvertAll(_rust.Encode(d), x => (int)x).AsSpan(_ours.SpecialTokensBefore.Count)))
                throw new InvalidOperationException("our ids differ from the Rust library's");
    }

    /// <summary>Seeded mixture of prose, code, digits, CJK, emoji and accented text, cut into ~4 KB documents.</summary>
    public static string[] MixedText(int chars)
    {
        string[] fragments =
        [
            "The quick brown fox jumps over the lazy dog. ", "It's what they'd said; we're sure you've seen it. ",
            "def train(model, data):\n    for batch in data:\n        loss = model(batch)\n", "for (int i = 0; i < n; ++i) { sum += x[i] * w[i]; }\n",
            "3.14159 2.71828 1,234,567 2026-12-01 0x7fff ", "日本語の文章と中文的句子。", "😀 👍 🦙 emoji ", "Ünïcödé àccénts — «quotes» ",
            "    indented\n\tand tabbed\n", "SELECT id, name FROM users WHERE id = 42;\n", "https://example.com/path?q=1&r=2 ",
            "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor. ", "Привет, мир! Γειά σου κόσμε. ",
        ];
        var rng = new Random(20261201);
        var docs = new List<string>();
        var sb = new StringBuilder();
        int total = 0;
        while (total < chars)
        {
            sb.Append(fragments[rng.Next(fragments.Length)]);
            if (rng.Next(8) == 0) sb.Append(rng.Next(1_000_000)).Append(' ');
            if (sb.Length >= 4096)
            {
                total += sb.Length;
                docs.Add(sb.ToString());
                sb.Clear();
            }
        }
        return [.. docs];
    }

    [Benchmark(Description = "ours, 1 thread")]
    public long Ours_1Thread()
    {
        long n = 0;
        foreach (var d in _documents) n += _ours.Encode(d, addSpecialTokens: false).Length;
        return n;
    }

    [Benchmark(Baseline = true, Description = "rust, 1 thread")]
    public long Rust_1Thread()
    {
        long n = 0;
        foreach (var d in _documents) n += _rust.Encode(d).Length;
        return n;
    }

    [Benchmark(Description = "ours, all cores")]
    public long Ours_AllCores()
    {
        long n = 0;
        Parallel.ForEach(_documents, d => Interlocked.Add(ref n, _ours.Encode(d, addSpecialTokens: false).Length));
        return n;
    }

    [Benchmark(Description = "rust, all cores")]
    public long Rust_AllCores()
    {
        long n = 0;
        Parallel.ForEach(_documents, d => Interlocked.Add(ref n, _rust.Encode(d).Length));
        return n;
    }
}

/// <summary>MB/s of UTF-8 text encoded, and the ratio to the Rust library's rate at the same thread count in the same run.</summary>
public sealed class TextThroughputColumn(bool relative) : IColumn
{
    public string Id => relative ? "TextVsRust" : "TextThroughput";
    public string ColumnName => relative ? "× rust (same threads)" : "MB/s (UTF-8)";
    public bool AlwaysShow => true;
    public ColumnCategory Category => ColumnCategory.Custom;
    public int PriorityInCategory => relative ? 3 : 2;
    public bool IsNumeric => true;
    public UnitType UnitType => UnitType.Dimensionless;
    public string Legend => relative ? "Our MB/s divided by the Rust library's at the same thread count" : "UTF-8 megabytes of text encoded per second";
    public bool IsDefault(Summary summary, BenchmarkCase benchmarkCase) => false;
    public bool IsAvailable(Summary summary) => true;
    public string GetValue(Summary summary, BenchmarkCase benchmarkCase) => GetValue(summary, benchmarkCase, SummaryStyle.Default);

    public string GetValue(Summary summary, BenchmarkCase benchmarkCase, SummaryStyle style)
    {
        double? rate = Rate(summary, benchmarkCase);
        if (rate is null) return "-";
        if (!relative) return rate.Value.ToString("0.0", System.Globalization.CultureInfo.InvariantCulture);
        string name = benchmarkCase.Descriptor.WorkloadMethod.Name;
        if (!name.StartsWith("Ours_", StringComparison.Ordinal)) return "-";
        var peer = summary.BenchmarksCases.FirstOrDefault(b => b.Descriptor.WorkloadMethod.Name == "Rust_" + name[5..]
                                                                && b.Parameters.DisplayInfo == benchmarkCase.Parameters.DisplayInfo);
        double? reference = peer is null ? null : Rate(summary, peer);
        return reference is null ? "-" : (rate.Value / reference.Value).ToString("0.00", System.Globalization.CultureInfo.InvariantCulture) + "×";
    }

    private static double? Rate(Summary summary, BenchmarkCase benchmarkCase)
    {
        if (benchmarkCase.Descriptor.Type != typeof(TokenizerThroughput)) return null;
        double? ns = summary[benchmarkCase]?.ResultStatistics?.Median;
        return ns is > 0 ? TokenizerThroughput.Bytes / 1e6 / (ns.Value / 1e9) : null;
    }
}
