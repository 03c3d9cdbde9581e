using System.Text.Json.Nodes;

namespace QLoRA.Text.Tests;

/// <summary>
/// Components the real files do not use (Metaspace, Digits, WhitespaceSplit, other split behaviors, normalizers,
/// added-token flags), checked against the Rust library by swapping them into real tokenizer.json files.
/// </summary>
public sealed class ComponentVariantTests(ITestOutputHelper output)
{
    public static TheoryData<string, string, string> Variants => new()
    {
        // name, base file, JSON patch applied to the root
        { "bytelevel-gpt2-regex-prefix-space", "llama3", """{"pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true}}""" },
        { "digits-individual-then-bytelevel", "llama3", """{"pre_tokenizer": {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": true}, {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": true}]}}""" },
        { "split-removed-contiguous", "llama3", """{"pre_tokenizer": {"type": "Sequence", "pretokenizers": [{"type": "Split", "pattern": {"String": "\n"}, "behavior": "Removed", "invert": false}, {"type": "Split", "pattern": {"Regex": "\\p{N}"}, "behavior": "Contiguous", "invert": false}, {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": true}]}}""" },
        { "split-merged-previous-invert", "llama3", """{"pre_tokenizer": {"type": "Sequence", "pretokenizers": [{"type": "Split", "pattern": {"Regex": "\\s+"}, "behavior": "MergedWithPrevious", "invert": false}, {"type": "Split", "pattern": {"Regex": "[a-z]+"}, "behavior": "Isolated", "invert": true}, {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false}]}}""" },
        { "normalizers-nfkc-lowercase-strip", "qwen3", """{"normalizer": {"type": "Sequence", "normalizers": [{"type": "NFKC"}, {"type": "Lowercase"}, {"type": "Strip", "strip_left": true, "strip_right": true}, {"type": "Replace", "pattern": {"Regex": "\\d+"}, "content": "#"}]}}""" },
        { "metaspace-always-split", "llama2", """{"normalizer": null, "pre_tokenizer": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": true}, "decoder": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": true}}""" },
        { "metaspace-first-nosplit", "llama2", """{"normalizer": null, "pre_tokenizer": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": false}}""" },
        { "whitespace-split-nfd", "llama2", """{"normalizer": {"type": "NFD"}, "pre_tokenizer": {"type": "Sequence", "pretokenizers": [{"type": "WhitespaceSplit"}, {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": false}]}}""" },
        { "added-token-flags", "llama3", """{"added_tokens": [ {"id": 128000, "content": "<|begin_of_text|>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}, {"id": 128009, "content": "<|eot_id|>", "single_word": false, "lstrip": true, "rstrip": true, "normalized": false, "special": true}, {"id": 128010, "content": "world", "single_word": true, "lstrip": false, "rstrip": false, "normalized": false, "special": false}, {"id": 128011, "content": "code", "single_word": false, "lstrip": true, "rstrip": false, "normalized": true, "special": false}, {"id": 128012, "content": "<s>", "single_word": false, "lstrip": false, "rstrip": true, "normalized": false, "special": true}]}""" },
        { "sp-added-token-flags", "llama2", """{"added_tokens": [ {"id": 0, "content": "<unk>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}, {"id": 1, "content": "<s>", "single_word": false, "lstrip": true, "rstrip": true, "normalized": false, "special": true}, {"id": 2, "content": "</s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": true, "special": true}, {"id": 32000, "content": "hello", "single_word": true, "lstrip": false, "rstrip": false, "normalized": true, "special": false}]}""" },
    };

    [Theory]
    [MemberData(nameof(Variants))]
    public void Variant_matches_the_rust_library(string name, string model, string patch)
    {
        var root = JsonNode.Parse(File.ReadAllText(Path.Combine(TokenizerFiles.Folder(model), "tokenizer.json")))!.AsObject();
        foreach (var (key, value) in JsonNode.Parse(patch)!.AsObject()) root[key] = value?.DeepClone();
        string dir = Directory.CreateTempSubdirectory("qlora-variant-").FullName;
        try
        {
            string path = Path.Combine(dir, "tokenizer.json");
            File.WriteAllText(path, root.ToJsonString());
            var ours = HfTokenizer.FromFile(path);
            using var reference = new Tokenizers.DotNet.Tokenizer(vocabPath: path);
            int total = 0, mismatches = 0;
            var report = new List<string>();
            var extra = new[] { "hello world code", "helloworld worldly world", " <|eot_id|>  next", "x <s>  y", "code  code\tcode", "Hello HELLO hello" };
            foreach (var text in TestCorpus.All().Concat(extra))
            {
                total++;
                int[] expected = Array.ConvertAll(reference.Encode(text), x => (int)x);
                int[] actual = ours.Encode(text);
                bool idsMatch = expected.AsSpan().SequenceEqual(actual);
                string expectedText = reference.Decode(Array.ConvertAll(expected, x => (uint)x));
                bool decodeMatch = expectedText == ours.Decode(expected, skipSpecialTokens: true, cleanUpTokenizationSpaces: false);
                if (idsMatch && decodeMatch) continue;
                mismatches++;
                if (report.Count < 5)
                    report.Add($"{ReferenceTokenizerTests.Escape(text)}\n  rust: [{string.Join(",", expected.Take(30))}] {ReferenceTokenizerTests.Escape(expectedText)}\n  ours: [{string.Join(",", actual.Take(30))}]");
            }
            output.WriteLine($"{name}: {total} strings, {mismatches} mismatches");
            Assert.True(mismatches == 0, $"{name}:\n" + string.Join("\n", report));
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }
}
