using System.Text.Json.Nodes;
using QLoRA.Text.Templates;

namespace QLoRA.Text.Tests;

/// <summary>Malformed tokenizer files, unknown components, bad templates: each a typed error naming the file (and position).</summary>
public sealed class BadInputTests
{
    private static string TempFolder() => Directory.CreateTempSubdirectory("qlora-bad-").FullName;

    private const string TinyTokenizer = """
        {"version": "1.0", "added_tokens": [{"id": 5, "content": "<s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}],
         "normalizer": null, "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
         "post_processor": null, "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
         "model": {"type": "BPE", "dropout": null, "unk_token": null, "fuse_unk": false, "byte_fallback": false,
                   "vocab": {"a": 0, "b": 1, "ab": 2, "Ġ": 3, "Ġab": 4}, "merges": ["a b", "Ġ ab"]}}
        """;

    [Fact]
    public void The_tiny_tokenizer_itself_loads_and_encodes()
    {
        string dir = TempFolder();
        File.WriteAllText(Path.Combine(dir, "tokenizer.json"), TinyTokenizer);
        var tok = HfTokenizer.FromFolder(dir);
        Assert.Equal([2, 4, 5], tok.Encode("ab ab<s>"));
        Assert.Equal("ab ab<s>", tok.Decode([2, 4, 5]));
        Assert.Equal("ab ab", tok.Decode([2, 4, 5], skipSpecialTokens: true));
    }

    [Fact]
    public void Every_truncation_of_tokenizer_json_is_a_typed_error_naming_the_file()
    {
        string dir = TempFolder();
        string path = Path.Combine(dir, "tokenizer.json");
        for (int cut = 0; cut < TinyTokenizer.Length - 1; cut += 3)
        {
            File.WriteAllText(path, TinyTokenizer[..cut]);
            var e = Assert.ThrowsAny<TextFormatException>(() => HfTokenizer.FromFile(path));
            Assert.Contains(path, e.Message);
        }
    }

    public static TheoryData<string, string, string> Corruptions => new()
    {
        // patch, expected exception type name, text the message must contain
        { """{"model": {"type": "WordPiece", "vocab": {}}}""", nameof(UnsupportedTokenizerComponentException), "WordPiece" },
        { """{"model": {"type": "Unigram", "vocab": []}}""", nameof(UnsupportedTokenizerComponentException), "Unigram" },
        { """{"normalizer": {"type": "Precompiled", "precompiled_charsmap": ""}}""", nameof(UnsupportedTokenizerComponentException), "'normalizer'" },
        { """{"pre_tokenizer": {"type": "Sequence", "pretokenizers": [{"type": "Whitespace"}]}}""", nameof(UnsupportedTokenizerComponentException), "pre_tokenizer.pretokenizers[0]" },
        { """{"pre_tokenizer": {"type": "Sequence", "pretokenizers": [{"type": "ByteLevel"}, {"type": "Digits"}]}}""", nameof(UnsupportedTokenizerComponentException), "pre_tokenizer.pretokenizers[1]" },
        { """{"decoder": {"type": "WordPiece", "prefix": "##"}}""", nameof(UnsupportedTokenizerComponentException), "'decoder'" },
        { """{"post_processor": {"type": "RobertaProcessing"}}""", nameof(UnsupportedTokenizerComponentException), "post_processor" },
        { """{"pre_tokenizer": {"type": "Split", "pattern": {"Regex": "(unclosed"}, "behavior": "Isolated"}}""", nameof(TextFormatException), "pre_tokenizer.pattern" },
        { """{"pre_tokenizer": {"type": "Split", "pattern": {"String": " "}, "behavior": "Sideways"}}""", nameof(TextFormatException), "pre_tokenizer.behavior" },
        { """{"model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": ["a c"]}}""", nameof(TextFormatException), "model.merges[0]" },
        { """{"model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": ["a b"]}}""", nameof(TextFormatException), "model.merges[0]" },
        { """{"model": {"type": "BPE", "vocab": {"a": 0, "b": 0}, "merges": []}}""", nameof(TextFormatException), "model.vocab" },
        { """{"model": {"type": "BPE", "vocab": {"a": -1}, "merges": []}}""", nameof(TextFormatException), "model.vocab.a" },
        { """{"model": {"type": "BPE", "vocab": {"a": "zero"}, "merges": []}}""", nameof(TextFormatException), "model.vocab.a" },
        { """{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a"]}}""", nameof(TextFormatException), "model.merges[0]" },
        { """{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": [], "unk_token": "<unk>"}}""", nameof(TextFormatException), "model.unk_token" },
        { """{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": [], "dropout": 0.1}}""", nameof(UnsupportedTokenizerComponentException), "model.dropout" },
        { """{"model": null}""", nameof(TextFormatException), "'model'" },
        { """{"added_tokens": [{"content": "x"}]}""", nameof(TextFormatException), "added_tokens[0].id" },
        { """{"added_tokens": [{"id": 9, "content": 3}]}""", nameof(TextFormatException), "added_tokens[0].content" },
        { """{"post_processor": {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<bos>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}], "special_tokens": {}}}""", nameof(TextFormatException), "post_processor.single[0]" },
        { """{"normalizer": {"type": "Strip", "strip_left": "yes"}}""", nameof(TextFormatException), "normalizer.strip_left" },
    };

    [Theory]
    [MemberData(nameof(Corruptions))]
    public void Corrupted_components_are_typed_errors_naming_file_and_component(string patch, string exceptionType, string mention)
    {
        var root = JsonNode.Parse(TinyTokenizer)!.AsObject();
        foreach (var (k, v) in JsonNode.Parse(patch)!.AsObject()) root[k] = v?.DeepClone();
        string path = Path.Combine(TempFolder(), "tokenizer.json");
        File.WriteAllText(path, root.ToJsonString());
        var e = Assert.ThrowsAny<TextFormatException>(() => HfTokenizer.FromFile(path));
        Assert.Equal(exceptionType, e.GetType().Name);
        Assert.Contains(path, e.Message);
        Assert.Contains(mention, e.Message);
    }

    [Fact]
    public void Non_object_and_empty_files_are_typed_errors()
    {
        string dir = TempFolder();
        string path = Path.Combine(dir, "tokenizer.json");
        foreach (var text in new[] { "", "[]", "null", "42", "{", "\"x\"", "{\"model\": []}" })
        {
            File.WriteAllText(path, text);
            var e = Assert.ThrowsAny<TextFormatException>(() => HfTokenizer.FromFile(path));
            Assert.Contains(path, e.Message);
        }
        Assert.Throws<FileNotFoundException>(() => HfTokenizer.FromFolder(Path.Combine(dir, "nothing-here")));
    }

    [Fact]
    public void Bad_tokenizer_config_and_generation_config_name_the_field()
    {
        string dir = TempFolder();
        File.WriteAllText(Path.Combine(dir, "tokenizer.json"), TinyTokenizer);
        File.WriteAllText(Path.Combine(dir, "tokenizer_config.json"), """{"chat_template": 5}""");
        var e = Assert.ThrowsAny<TextFormatException>(() => HfTokenizer.FromFolder(dir));
        Assert.Contains("tokenizer_config.json", e.Message);
        Assert.Contains("chat_template", e.Message);

        File.WriteAllText(Path.Combine(dir, "tokenizer_config.json"), """{"chat_template": [{"name": "default"}]}""");
        e = Assert.ThrowsAny<TextFormatException>(() => HfTokenizer.FromFolder(dir));
        Assert.Contains("chat_template[0].template", e.Message);

        foreach (var (json, field) in new[]
        {
            ("""{"eos_token_id": "two"}""", "eos_token_id"), ("""{"eos_token_id": [1, -2]}""", "eos_token_id[1]"),
            ("""{"top_p": 1.5}""", "top_p"), ("""{"temperature": -1}""", "temperature"), ("""{"top_k": 2.5}""", "top_k"), ("[1]", "must be a JSON object"),
        })
        {
            File.WriteAllText(Path.Combine(dir, "generation_config.json"), json);
            var g = Assert.ThrowsAny<TextFormatException>(() => GenerationConfig.Load(dir));
            Assert.Contains("generation_config.json", g.Message);
            Assert.Contains(field, g.Message);
        }
    }

    [Fact]
    public void Generation_config_reads_an_id_list_and_sampling_defaults()
    {
        string dir = TempFolder();
        File.WriteAllText(Path.Combine(dir, "generation_config.json"),
            """{"bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009], "do_sample": true, "temperature": 0.6, "top_p": 0.9, "transformers_version": "4.43.0"}""");
        var g = GenerationConfig.Load(dir);
        Assert.Equal([128001, 128008, 128009], g.EosTokenIds);
        Assert.Equal(128000, g.BosTokenId);
        Assert.Equal(0.6, g.Temperature);
        Assert.Equal(0.9, g.TopP);
        Assert.True(g.DoSample);
        Assert.Null(g.TopK);
        File.WriteAllText(Path.Combine(dir, "generation_config.json"), """{"eos_token_id": 2, "pad_token_id": 0, "max_new_tokens": 256}""");
        g = GenerationConfig.Load(dir);
        Assert.Equal([2], g.EosTokenIds);
        Assert.Equal(0, g.PadTokenId);
        Assert.Equal(256, g.MaxNewTokens);
        Assert.Empty(GenerationConfig.Load(Path.Combine(dir, "absent")).EosTokenIds);
    }

    public static TheoryData<string, string, int, int> SyntaxErrors => new()
    {
        // template, expected text, line, column
        { "{% if x %}no end", "expected '{% elif", 1, 17 },
        { "a\n{{ x + }}", "unexpected '}}'", 2, 8 },
        { "{% for %}{% endfor %}", "expected a name", 1, 8 },
        { "{{ 'unterminated }}", "unterminated string", 1, 4 },
        { "{% endif %}", "unexpected '{% endif %}'", 1, 4 },
        { "line1\nline2 {# never closed", "unclosed comment", 2, 7 },
        { "{{ x", "unclosed '{{'", 1, 1 },
        { "{% frobnicate %}", "unknown tag 'frobnicate'", 1, 4 },
        { "{{ a b }}", "expected '}}'", 1, 6 },
    };

    [Theory]
    [MemberData(nameof(SyntaxErrors))]
    public void Template_syntax_errors_name_the_position(string template, string expected, int line, int column)
    {
        var e = Assert.Throws<TemplateSyntaxException>(() => ChatTemplate.Parse(template, "tokenizer_config.json"));
        Assert.Contains(expected, e.Message);
        Assert.Contains("tokenizer_config.json", e.Message);
        Assert.Equal((line, column), (e.Line, e.Column));
    }

    [Theory]
    [InlineData("{% include 'other.jinja' %}", "tag 'include'")]
    [InlineData("{% extends 'base' %}", "tag 'extends'")]
    [InlineData("{% for x in y recursive %}{% endfor %}", "recursive for loop")]
    public void Unsupported_tags_name_the_construct(string template, string construct)
    {
        var e = Assert.Throws<TemplateUnsupportedException>(() => ChatTemplate.Parse(template));
        Assert.Equal(construct, e.Construct);
        Assert.Equal(1, e.Line);
    }

    [Theory]
    [InlineData("\n  {{ messages | wordwrap(5) }}", "filter 'wordwrap'", 2, 17)]
    [InlineData("{{ messages is frobnicated }}", "test 'frobnicated'", 1, 13)]
    [InlineData("{{ '%s' % 1 }}", "printf-style string formatting with '%'", 1, 9)]
    [InlineData("{{ strftime_now('%G') }}", "strftime directive '%G'", 1, 16)]
    public void Unsupported_filters_tests_and_functions_name_the_construct_and_position(string template, string construct, int line, int column)
    {
        var t = ChatTemplate.Parse(template);
        var e = Assert.Throws<TemplateUnsupportedException>(() => t.Render(new ChatTemplateInputs { Messages = [new ChatMessage("user", "hi")] }));
        Assert.Equal(construct, e.Construct);
        Assert.Equal((line, column), (e.Line, e.Column));
    }

    [Fact]
    public void Raise_exception_surfaces_the_templates_message()
    {
        var t = ChatTemplate.Parse("{% if messages[0].role != 'user' %}\n  {{ raise_exception('First message must be from the user') }}{% endif %}", "chat_template.jinja");
        var e = Assert.Throws<TemplateRaisedException>(() => t.Render(new ChatTemplateInputs { Messages = [new ChatMessage("assistant", "x")] }));
        Assert.Equal("First message must be from the user", e.TemplateMessage);
        Assert.Equal(2, e.Line);
        Assert.Contains("chat_template.jinja", e.Message);
    }

    [Fact]
    public void Using_an_undefined_value_is_a_runtime_error_with_position()
    {
        var t = ChatTemplate.Parse("ok\n{{ missing.attribute }}");
        var e = Assert.Throws<TemplateRuntimeException>(() => t.Render(new ChatTemplateInputs { Messages = [] }));
        Assert.Contains("'missing' is undefined", e.Message);
        Assert.Equal(2, e.Line);
    }

    [Fact]
    public void Templates_from_chat_template_jinja_and_json_files_load()
    {
        string dir = TempFolder();
        File.WriteAllText(Path.Combine(dir, "tokenizer.json"), TinyTokenizer);
        File.WriteAllText(Path.Combine(dir, "tokenizer_config.json"), """{"chat_template": [{"name": "default", "template": "A"}, {"name": "tool_use", "template": "B"}], "eos_token": "<s>"}""");
        var cfg = TokenizerConfig.Load(dir);
        Assert.Equal("A", cfg.ChatTemplate);
        Assert.Equal("B", cfg.ChatTemplates["tool_use"]);
        File.WriteAllText(Path.Combine(dir, "chat_template.json"), """{"chat_template": "J"}""");
        Assert.Equal("J", TokenizerConfig.Load(dir).ChatTemplate);
        File.WriteAllText(Path.Combine(dir, "chat_template.jinja"), "{{ eos_token }}");
        cfg = TokenizerConfig.Load(dir);
        Assert.Equal("{{ eos_token }}", cfg.ChatTemplate);
        Assert.EndsWith("chat_template.jinja", cfg.ChatTemplateSource);
        var tok = HfTokenizer.FromFolder(dir);
        Assert.Equal(5, tok.EosTokenId);
        Assert.Equal("<s>", new ChatFormatter(tok).Render([], addGenerationPrompt: false));
    }
}
