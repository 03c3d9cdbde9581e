namespace QLoRA.Text.Tests;

/// <summary>add_special_tokens, special tokens, offsets.</summary>
public sealed class EncodeBehaviourTests
{
    [Theory]
    [InlineData("llama2", "<s>")]
    [InlineData("gemma3", "<bos>")]
    public void Bos_comes_from_the_post_processor_once(string model, string bos)
    {
        var tok = TokenizerFiles.Ours(model);
        int bosId = tok.TokenToId(bos)!.Value;
        Assert.Equal(bosId, tok.BosTokenId);
        Assert.Equal([bosId], tok.SpecialTokensBefore);
        int[] with = tok.Encode("Hello world", addSpecialTokens: true);
        int[] without = tok.Encode("Hello world", addSpecialTokens: false);
        Assert.Equal(bosId, with[0]);
        Assert.NotEqual(bosId, without[0]);
        Assert.Equal(without, with[1..]);
        // A rendered template that already starts with BOS, encoded without special tokens: exactly one BOS.
        int[] rendered = tok.Encode(bos + "Hello world", addSpecialTokens: false);
        Assert.Equal(1, rendered.Count(i => i == bosId));
    }

    [Fact]
    public void Llama3s_file_adds_no_bos_and_matches_special_tokens_in_text()
    {
        var tok = TokenizerFiles.Ours("llama3");
        Assert.Empty(tok.SpecialTokensBefore);    // this tokenizer.json's post-processor is ByteLevel only
        int[] ids = tok.Encode("<|begin_of_text|>Hi<|eot_id|>", addSpecialTokens: true);
        Assert.Equal(128000, ids[0]);
        Assert.Equal(128009, ids[^1]);
        Assert.True(tok.IsSpecial(128000));
        Assert.Equal("Hi", tok.Decode(ids, skipSpecialTokens: true));
        Assert.Equal("<|begin_of_text|>Hi<|eot_id|>", tok.Decode(ids, skipSpecialTokens: false));
    }

    [Theory]
    [InlineData("llama3")]
    [InlineData("qwen3")]
    [InlineData("llama2")]
    [InlineData("gemma3")]
    public void Offsets_cover_the_text_in_order_and_match_what_each_token_decodes_to(string model)
    {
        var tok = TokenizerFiles.Ours(model);
        foreach (var text in TestCorpus.All().Take(200))
        {
            var enc = tok.EncodeWithOffsets(text, addSpecialTokens: false);
            Assert.Equal(tok.Encode(text, addSpecialTokens: false), enc.Ids);
            Assert.Equal(enc.Ids.Length, enc.Offsets.Length);
            int previousStart = 0, previousEnd = 0;
            for (int i = 0; i < enc.Ids.Length; i++)
            {
                var (s, e) = enc.Offsets[i];
                Assert.InRange(s, 0, text.Length);
                Assert.InRange(e, s, text.Length);
                // Spans move forward; tokens of one char split into bytes (or a prepended "▁") share that char's span.
                Assert.True(s >= previousStart && e >= previousEnd,
                    $"{model}: token {i} of {ReferenceTokenizerTests.Escape(text)} spans [{s},{e}) after [{previousStart},{previousEnd})");
                previousStart = s;
                previousEnd = e;
                string piece = tok.Decode([enc.Ids[i]], cleanUpTokenizationSpaces: false);
                if (piece.Contains('\uFFFD') || tok.IsSpecial(enc.Ids[i]) || piece.Trim().Length == 0) continue;   // a partial character, or a space
                // The decoded token is its (normalized) source text, up to "▁" ↔ " " and SentencePiece's dropped leading space.
                string source = text[s..e].Normalize(System.Text.NormalizationForm.FormC);
                Assert.Equal(Squeeze(source), Squeeze(piece.Normalize(System.Text.NormalizationForm.FormC)));
            }
        }
    }

    private static string Squeeze(string s) => s.Replace('▁', ' ').Replace(" ", "");

    [Fact]
    public void Offsets_of_a_known_sentence()
    {
        var tok = TokenizerFiles.Ours("llama3");
        var enc = tok.EncodeWithOffsets("Hello world, 😀!", addSpecialTokens: false);
        string text = "Hello world, 😀!";
        Assert.Equal(["Hello", " world", ",", " 😀", "!"], enc.Offsets.Select(o => text[o.Start..o.End]).Distinct().ToArray());
    }
}

/// <summary>transformers' add_bos_token/add_eos_token for Llama- and Gemma-class tokenizers.</summary>
public sealed class AddBosEosTests
{
    [Theory]
    [InlineData(true, true)]
    [InlineData(false, true)]
    [InlineData(false, false)]
    public void Config_flags_rebuild_the_template_as_transformers_does(bool addBos, bool addEos)
    {
        string dir = Directory.CreateTempSubdirectory("qlora-boseos-").FullName;
        string src = TokenizerFiles.Folder("llama2");
        File.Copy(Path.Combine(src, "tokenizer.json"), Path.Combine(dir, "tokenizer.json"));
        var config = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(Path.Combine(src, "tokenizer_config.json")))!.AsObject();
        config["add_bos_token"] = addBos;
        config["add_eos_token"] = addEos;
        File.WriteAllText(Path.Combine(dir, "tokenizer_config.json"), config.ToJsonString());
        var tok = HfTokenizer.FromFolder(dir);
        int[] plain = TokenizerFiles.Ours("llama2").Encode("Hello", addSpecialTokens: false);
        int[] ids = tok.Encode("Hello");
        int[] expected = [.. (addBos ? new[] { 1 } : []), .. plain, .. (addEos ? new[] { 2 } : [])];
        Assert.Equal(expected, ids);
        Assert.Equal(plain, tok.Encode("Hello", addSpecialTokens: false));
    }
}
