namespace QLoRA.Text.Tests;

/// <summary>Token ids against the Hugging Face tokenizers library (Rust) on the real files of four model families.</summary>
public sealed class ReferenceTokenizerTests(ITestOutputHelper output)
{
    public static TheoryData<string> Models => new(TokenizerFiles.Models);

    [Theory]
    [MemberData(nameof(Models))]
    public void Ids_match_the_rust_library_on_the_whole_corpus(string model)
    {
        var ours = TokenizerFiles.Ours(model);
        var reference = TokenizerFiles.Reference(model);
        int total = 0, mismatches = 0;
        var report = new List<string>();
        foreach (var text in TestCorpus.All())
        {
            total++;
            // Tokenizers.DotNet encodes with add_special_tokens = true.
            int[] expected = Array.ConvertAll(reference.Encode(text), x => (int)x);
            int[] actual = ours.Encode(text, addSpecialTokens: true);
            if (expected.AsSpan().SequenceEqual(actual)) continue;
            mismatches++;
            if (report.Count < 8)
                report.Add($"{Escape(text)}\n  rust: [{string.Join(",", expected.Take(40))}]\n  ours: [{string.Join(",", actual.Take(40))}]");
        }
        output.WriteLine($"{model}: {total} strings, {mismatches} mismatches");
        Assert.True(total >= 300, $"corpus has only {total} strings");
        Assert.True(mismatches == 0, $"{model}: {mismatches} of {total} strings differ from the Rust library:\n" + string.Join("\n", report));
    }

    internal static string Escape(string s) =>
        s.Length > 120 ? System.Text.Json.JsonSerializer.Serialize(s[..120]) + "…" : System.Text.Json.JsonSerializer.Serialize(s);
}
