using System.Runtime.InteropServices;
using QLoRA.Core;
using QLoRA.Core.SafeTensors;
using QLoRA.Text.Tokenization;

namespace QLoRA.Runtime.Tests;

/// <summary>
/// A Llama checkpoint whose greedy continuation is a script: embeddings are one-hot rows, every block adds nothing
/// (o_proj and down_proj are zero), and lm_head maps token t to next(t) — so after token t the argmax is next(t), by a
/// margin, whatever the context. With the byte-level tokenizer and its chat template, text-level behaviour (streaming
/// of multi-byte characters, stop strings across tokens, chat clients) is tested against known text.
/// </summary>
public static class ScriptedModel
{
    public const int Hidden = 288, Heads = 4, KvHeads = 2, Inter = 64;

    /// <summary>After the generation prompt: "Quick brown", "é", "€", "😀", then the end-of-turn token.</summary>
    public const string Script = "Quick brown" + "é€😀";

    /// <summary>Writes the checkpoint, its byte-level tokenizer files and a generation_config.json whose eos is &lt;|end|&gt;.</summary>
    public static string Write()
    {
        string folder = Directory.CreateTempSubdirectory("qlora-scripted-").FullName;
        int vocab = ByteTokenizer.VocabSize;
        ByteTokenizer.WriteFiles(folder);
        File.WriteAllText(Path.Combine(folder, "generation_config.json"), $$"""{"bos_token_id": 256, "eos_token_id": [{{ByteTokenizer.EndOfTurn}}]}""");
        File.WriteAllText(Path.Combine(folder, "config.json"), $$"""
            {"model_type":"llama","hidden_size":{{Hidden}},"intermediate_size":{{Inter}},"num_hidden_layers":2,"num_attention_heads":{{Heads}},
             "num_key_value_heads":{{KvHeads}},"vocab_size":{{vocab}},"rms_norm_eps":1e-5,"rope_theta":10000.0,"max_position_embeddings":256,"torch_dtype":"float32"}
            """);

        // The script as a successor function over ids (every byte of it distinct): the generation prompt's last token
        // (<|assistant|>) starts it.
        var next = new Dictionary<int, int>();
        byte[] bytes = System.Text.Encoding.UTF8.GetBytes(Script);
        int previous = 260;
        foreach (byte b in bytes)
        {
            next[previous] = b;
            previous = b;
        }

        next[previous] = ByteTokenizer.EndOfTurn;
        var entries = new List<(SafeTensorSpec, ReadOnlyMemory<byte>)>();
        void Add(string name, float[] values, params long[] shape) => entries.Add((new SafeTensorSpec(name, DType.F32, shape), MemoryMarshal.AsBytes(values.AsSpan()).ToArray()));
        var embed = new float[vocab * Hidden];
        var head = new float[vocab * Hidden];
        for (int t = 0; t < vocab; t++)
        {
            embed[(t * Hidden) + t] = 1f;
            head[((next.TryGetValue(t, out int n) ? n : ByteTokenizer.EndOfTurn) * Hidden) + t] = 1f;
        }

        var rng = new Random(3);
        float[] Noise(int count) => [.. Enumerable.Range(0, count).Select(_ => (float)((rng.NextDouble() - 0.5) * 0.2))];
        Add("model.embed_tokens.weight", embed, vocab, Hidden);
        Add("lm_head.weight", head, vocab, Hidden);
        Add("model.norm.weight", [.. Enumerable.Repeat(1f, Hidden)], Hidden);
        int headDim = Hidden / Heads;
        for (int l = 0; l < 2; l++)
        {
            string p = $"model.layers.{l}.";
            Add(p + "input_layernorm.weight", [.. Enumerable.Repeat(1f, Hidden)], Hidden);
            Add(p + "post_attention_layernorm.weight", [.. Enumerable.Repeat(1f, Hidden)], Hidden);
            Add(p + "self_attn.q_proj.weight", Noise(Hidden * Hidden), Hidden, Hidden);
            Add(p + "self_attn.k_proj.weight", Noise(KvHeads * headDim * Hidden), KvHeads * headDim, Hidden);
            Add(p + "self_attn.v_proj.weight", Noise(KvHeads * headDim * Hidden), KvHeads * headDim, Hidden);
            Add(p + "self_attn.o_proj.weight", new float[Hidden * Hidden], Hidden, Hidden);
            Add(p + "mlp.gate_proj.weight", Noise(Inter * Hidden), Inter, Hidden);
            Add(p + "mlp.up_proj.weight", Noise(Inter * Hidden), Inter, Hidden);
            Add(p + "mlp.down_proj.weight", new float[Hidden * Inter], Hidden, Inter);
        }

        SafeTensorsWriter.Save(Path.Combine(folder, "model.safetensors"), entries);
        return folder;
    }
}
