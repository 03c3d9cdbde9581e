namespace QLoRA.Text.Tests;

/// <summary>Decoding against the Rust library, and the streaming detokenizer against whole decoding.</summary>
public sealed class DecodeTests(ITestOutputHelper output)
{
    public static TheoryData<string> Models => new(TokenizerFiles.Models);

    [Theory]
    [MemberData(nameof(Models))]
    public void Decode_matches_the_rust_library(string model)
    {
        var ours = TokenizerFiles.Ours(model);
        var reference = TokenizerFiles.Reference(model);
        int mismatches = 0, total = 0;
        var report = new List<string>();
        foreach (var text in TestCorpus.All())
        {
            total++;
            uint[] ids = reference.Encode(text);
            // Tokenizers.DotNet decodes with skip_special_tokens = true and no transformers clean-up.
            string expected = reference.Decode(ids);
            string actual = ours.Decode(Array.ConvertAll(ids, x => (int)x), skipSpecialTokens: true, cleanUpTokenizationSpaces: false);
            if (expected == actual) continue;
            mismatches++;
            if (report.Count < 5) report.Add($"{ReferenceTokenizerTests.Escape(text)}: rust {ReferenceTokenizerTests.Escape(expected)} ours {ReferenceTokenizerTests.Escape(actual)}");
        }
        output.WriteLine($"{model}: {total} decodes, {mismatches} mismatches");
        Assert.True(mismatches == 0, string.Join("\n", report));
    }

    [Theory]
    [InlineData("llama3")]
    [InlineData("qwen3")]
    public void Byte_level_decode_inverts_encode_exactly(string model)
    {
        var tok = TokenizerFiles.Ours(model);
        foreach (var text in TestCorpus.All())
        {
            // Qwen's normalizer is NFC, so its round trip gives the NFC form.
            string expected = model == "qwen3" ? text.Normalize(System.Text.NormalizationForm.FormC) : text;
            Assert.Equal(expected, tok.Decode(tok.Encode(text, addSpecialTokens: false), cleanUpTokenizationSpaces: false));
        }
    }

    [Theory]
    [MemberData(nameof(Models))]
    public void Streaming_concatenation_equals_decode_at_every_step(string model)
    {
        var tok = TokenizerFiles.Ours(model);
        int steps = 0;
        foreach (bool skip in new[] { true, false })
        foreach (var text in TestCorpus.All())
        {
            int[] ids = tok.Encode(text, addSpecialTokens: true);
            if (ids.Length > 3000) ids = ids[..3000];
            string full = tok.Decode(ids, skipSpecialTokens: skip);
            var detok = tok.CreateDetokenizer(skipSpecialTokens: skip);
            var emitted = new System.Text.StringBuilder();
            for (int i = 0; i < ids.Length; i++)
            {
                emitted.Append(detok.Add(ids[i]));
                string sofar = emitted.ToString();
                steps++;
                // What was emitted is final: a prefix of the whole decode, never ending inside a surrogate pair.
                Assert.True(full.StartsWith(sofar, StringComparison.Ordinal),
                    $"{model} step {i} of {ReferenceTokenizerTests.Escape(text)}: emitted {ReferenceTokenizerTests.Escape(sofar)} is not a prefix of {ReferenceTokenizerTests.Escape(full)}");
                Assert.False(sofar.Length > 0 && char.IsHighSurrogate(sofar[^1]), "emitted half a surrogate pair");
                // Text that decodes completely is not held back (except clean-up's short tail).
                string prefixDecode = tok.Decode(ids.AsSpan(0, i + 1), skipSpecialTokens: skip);
                if (!prefixDecode.EndsWith('\uFFFD') && !tok.Config.CleanUpTokenizationSpaces)
                    Assert.Equal(prefixDecode, sofar);
            }
            emitted.Append(detok.Flush());
            Assert.Equal(full, emitted.ToString());
        }
        output.WriteLine($"{model}: {steps} streaming steps checked");
    }

    [Fact]
    public void A_four_byte_emoji_over_byte_fallback_tokens_is_held_until_complete()
    {
        var tok = TokenizerFiles.Ours("llama2");
        // U+1FAE0 (melting face) is not in Llama 2's vocabulary: ▁ then its four UTF-8 bytes F0 9F AB A0 as byte tokens.
        int[] ids = tok.Encode("\U0001FAE0", addSpecialTokens: false);
        Assert.Equal(["▁", "<0xF0>", "<0x9F>", "<0xAB>", "<0xA0>"], ids.Select(i => tok.IdToToken(i)!).ToArray());
        var detok = tok.CreateDetokenizer();
        Assert.Equal("", detok.Add(ids[0]));
        Assert.Equal("", detok.Add(ids[1]));
        Assert.Equal("", detok.Add(ids[2]));
        Assert.Equal("", detok.Add(ids[3]));
        Assert.Equal("\U0001FAE0", detok.Add(ids[4]));
        Assert.Equal("", detok.Flush());
    }

    [Fact]
    public void Clean_up_spaces_follows_transformers()
    {
        Assert.Equal("Hello, world. Isn't it? I'm 'ok' they've we're it's!",
            HfTokenizer.CleanUpTokenizationSpaces("Hello , world . Is n't it ? I 'm 'ok' they 've we 're it 's !"));
        var tok = TokenizerFiles.Ours("llama3");   // its tokenizer_config.json turns clean-up on
        Assert.True(tok.Config.CleanUpTokenizationSpaces);
        int[] ids = tok.Encode("a . b", addSpecialTokens: false);
        Assert.Equal("a. b", tok.Decode(ids));
        Assert.Equal("a . b", tok.Decode(ids, cleanUpTokenizationSpaces: false));
        var detok = tok.CreateDetokenizer();
        string streamed = string.Concat(ids.Select(detok.Add)) + detok.Flush();
        Assert.Equal("a. b", streamed);
    }
}
