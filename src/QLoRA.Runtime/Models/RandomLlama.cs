using System.Runtime.InteropServices;
using QLoRA.Core;
using QLoRA.Core.Numerics;
using QLoRA.Core.SafeTensors;
using QLoRA.Text.Tokenization;

namespace QLoRA.Runtime.Models;

/// <summary>Shape of a <see cref="RandomLlama"/> checkpoint.</summary>
/// <param name="Hidden">hidden_size (a multiple of 32 and of Heads).</param>
/// <param name="Intermediate">intermediate_size.</param>
/// <param name="Layers">num_hidden_layers.</param>
/// <param name="Heads">num_attention_heads.</param>
/// <param name="KeyValueHeads">num_key_value_heads.</param>
/// <param name="Seed">Seed of the weights.</param>
public sealed record RandomLlamaOptions(int Hidden = 128, int Intermediate = 352, int Layers = 4, int Heads = 4, int KeyValueHeads = 2, int Seed = 1234);

/// <summary>
/// A small Llama checkpoint with random bf16 weights and the byte-level tokenizer (<see cref="ByteTokenizer"/>, with its
/// chat template): a complete Hugging Face folder to try training and generation without a download — the
/// <c>qlora demo</c> model and the <c>qlora-finetune</c> template's default.
/// </summary>
public static class RandomLlama
{
    /// <summary>Writes config.json, model.safetensors, tokenizer.json, tokenizer_config.json and generation_config.json.</summary>
    /// <returns>Bytes of model.safetensors.</returns>
    public static long Write(string folder, RandomLlamaOptions? options = null)
    {
        RandomLlamaOptions o = options ?? new RandomLlamaOptions();
        int vocab = ByteTokenizer.VocabSize, hidden = o.Hidden, inter = o.Intermediate, kvDim = o.KeyValueHeads * (hidden / o.Heads);
        Directory.CreateDirectory(folder);
        File.WriteAllText(Path.Combine(folder, "config.json"), $$"""
            {"model_type": "llama", "hidden_size": {{hidden}}, "intermediate_size": {{inter}}, "num_hidden_layers": {{o.Layers}}, "num_attention_heads": {{o.Heads}},
             "num_key_value_heads": {{o.KeyValueHeads}}, "vocab_size": {{vocab}}, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 256, "torch_dtype": "bfloat16"}
            """);
        File.WriteAllText(Path.Combine(folder, "generation_config.json"), $$"""{"bos_token_id": 256, "eos_token_id": [{{ByteTokenizer.EndOfTurn}}]}""");
        ByteTokenizer.WriteFiles(folder);
        var rng = new Random(o.Seed);
        var tensors = new List<(SafeTensorSpec, ReadOnlyMemory<byte>)>();
        void Add(string name, double scale, params long[] shape)
        {
            long n = shape.Aggregate(1L, (a, b) => a * b);
            BFloat16[] v = [.. Enumerable.Range(0, (int)n).Select(_ => BFloat16.FromSingle(shape.Length == 1 ? 1f : (float)((rng.NextDouble() - 0.5) * 2 * scale)))];
            tensors.Add((new SafeTensorSpec(name, DType.BF16, shape), MemoryMarshal.AsBytes(v.AsSpan()).ToArray()));
        }

        Add("model.embed_tokens.weight", 0.5, vocab, hidden);
        for (int l = 0; l < o.Layers; l++)
        {
            string p = $"model.layers.{l}.";
            Add(p + "input_layernorm.weight", 0, hidden);
            Add(p + "self_attn.q_proj.weight", 0.05, hidden, hidden);
            Add(p + "self_attn.k_proj.weight", 0.05, kvDim, hidden);
            Add(p + "self_attn.v_proj.weight", 0.05, kvDim, hidden);
            Add(p + "self_attn.o_proj.weight", 0.05, hidden, hidden);
            Add(p + "post_attention_layernorm.weight", 0, hidden);
            Add(p + "mlp.gate_proj.weight", 0.05, inter, hidden);
            Add(p + "mlp.up_proj.weight", 0.05, inter, hidden);
            Add(p + "mlp.down_proj.weight", 0.05, hidden, inter);
        }

        Add("model.norm.weight", 0, hidden);
        Add("lm_head.weight", 0.05, vocab, hidden);
        string path = Path.Combine(folder, "model.safetensors");
        SafeTensorsWriter.Save(path, tensors);
        return new FileInfo(path).Length;
    }
}
