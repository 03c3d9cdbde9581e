using System.Text.Json;
using System.Text.Json.Nodes;

namespace QLoRA.Text.Tokenization;

/// <summary>
/// A complete byte-level tokenizer for small models and demos, as Hugging Face files: <c>tokenizer.json</c> (BPE over
/// the 256 byte symbols, no merges — every byte one token, any text encodes) with special tokens for a chat template,
/// and <c>tokenizer_config.json</c> with that template. Loadable by the Hugging Face tokenizers library and by
/// <see cref="HfTokenizer"/>.
/// </summary>
public static class ByteTokenizer
{
    /// <summary>The special tokens after the 256 bytes, in id order: 256 …</summary>
    public static IReadOnlyList<string> SpecialTokens { get; } = ["<s>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"];

    /// <summary>Vocabulary size (bytes and special tokens).</summary>
    public static int VocabSize => 256 + SpecialTokens.Count;

    /// <summary>The end-of-turn token id (the eos token).</summary>
    public static int EndOfTurn => 257;

    /// <summary>The chat template: BOS, then <c>&lt;|role|&gt;content&lt;|end|&gt;</c> per message.</summary>
    public const string ChatTemplate = "{{ bos_token }}{% for message in messages %}{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}";

    /// <summary>Writes tokenizer.json and tokenizer_config.json into <paramref name="folder"/>.</summary>
    public static void WriteFiles(string folder)
    {
        Directory.CreateDirectory(folder);
        var vocab = new JsonObject();
        for (int b = 0; b < 256; b++)
        {
            vocab[ByteLevelAlphabet.ByteToChar[b].ToString()] = b;
        }

        var added = new JsonArray();
        for (int i = 0; i < SpecialTokens.Count; i++)
        {
            added.Add(new JsonObject { ["id"] = 256 + i, ["content"] = SpecialTokens[i], ["single_word"] = false, ["lstrip"] = false, ["rstrip"] = false, ["normalized"] = false, ["special"] = true });
        }

        var tokenizer = new JsonObject
        {
            ["version"] = "1.0",
            ["truncation"] = null,
            ["padding"] = null,
            ["added_tokens"] = added,
            ["normalizer"] = null,
            ["pre_tokenizer"] = new JsonObject { ["type"] = "ByteLevel", ["add_prefix_space"] = false, ["trim_offsets"] = true, ["use_regex"] = false },
            ["post_processor"] = null,
            ["decoder"] = new JsonObject { ["type"] = "ByteLevel", ["add_prefix_space"] = false, ["trim_offsets"] = true, ["use_regex"] = false },
            ["model"] = new JsonObject
            {
                ["type"] = "BPE", ["dropout"] = null, ["unk_token"] = null, ["continuing_subword_prefix"] = null, ["end_of_word_suffix"] = null,
                ["fuse_unk"] = false, ["byte_fallback"] = false, ["ignore_merges"] = false, ["vocab"] = vocab, ["merges"] = new JsonArray(),
            },
        };
        var config = new JsonObject
        {
            ["bos_token"] = "<s>", ["eos_token"] = "<|end|>", ["pad_token"] = "<|end|>", ["add_bos_token"] = false, ["add_eos_token"] = false,
            ["clean_up_tokenization_spaces"] = false, ["model_max_length"] = 4096, ["tokenizer_class"] = "PreTrainedTokenizerFast", ["chat_template"] = ChatTemplate,
        };
        var options = new JsonSerializerOptions { WriteIndented = true };
        QLoRA.Core.AtomicFile.WriteAllText(Path.Combine(folder, "tokenizer.json"), tokenizer.ToJsonString(options));
        QLoRA.Core.AtomicFile.WriteAllText(Path.Combine(folder, "tokenizer_config.json"), config.ToJsonString(options));
    }
}
