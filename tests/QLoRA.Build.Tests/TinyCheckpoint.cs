using System.Runtime.InteropServices;
using QLoRA.Core;
using QLoRA.Core.Numerics;
using QLoRA.Core.SafeTensors;

namespace QLoRA.Build.Tests;

/// <summary>A tiny random Llama checkpoint in HF layout (hidden 64, 2 layers, GQA 4/2 heads, vocab 100), written by the tests.</summary>
internal static class TinyCheckpoint
{
    public const int Hidden = 64, Intermediate = 128, Layers = 2, Heads = 4, KvHeads = 2, Vocab = 100, HeadDim = 16;

    public static string ConfigJson(int layers = Layers) => $$"""
        {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": {{Hidden}}, "intermediate_size": {{Intermediate}},
         "num_hidden_layers": {{layers}}, "num_attention_heads": {{Heads}}, "num_key_value_heads": {{KvHeads}}, "vocab_size": {{Vocab}},
         "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "max_position_embeddings": 256, "tie_word_embeddings": false, "torch_dtype": "bfloat16"}
        """;

    public static IEnumerable<(string Name, long[] Shape)> Layout()
    {
        yield return ("model.embed_tokens.weight", [Vocab, Hidden]);
        yield return ("model.norm.weight", [Hidden]);
        yield return ("lm_head.weight", [Vocab, Hidden]);
        for (int i = 0; i < Layers; i++)
        {
            string p = $"model.layers.{i}.";
            yield return (p + "input_layernorm.weight", [Hidden]);
            yield return (p + "post_attention_layernorm.weight", [Hidden]);
            yield return (p + "self_attn.q_proj.weight", [Heads * HeadDim, Hidden]);
            yield return (p + "self_attn.k_proj.weight", [KvHeads * HeadDim, Hidden]);
            yield return (p + "self_attn.v_proj.weight", [KvHeads * HeadDim, Hidden]);
            yield return (p + "self_attn.o_proj.weight", [Hidden, Heads * HeadDim]);
            yield return (p + "mlp.gate_proj.weight", [Intermediate, Hidden]);
            yield return (p + "mlp.up_proj.weight", [Intermediate, Hidden]);
            yield return (p + "mlp.down_proj.weight", [Hidden, Intermediate]);
        }
    }

    public static byte[] RandomBf16(long count, int seed)
    {
        var rng = new Random(seed);
        var values = new BFloat16[count];
        for (long i = 0; i < count; i++)
        {
            double u1 = 1.0 - rng.NextDouble(), u2 = rng.NextDouble();
            values[i] = BFloat16.FromSingle((float)(0.02 * Math.Sqrt(-2 * Math.Log(u1)) * Math.Cos(2 * Math.PI * u2)));
        }

        return MemoryMarshal.AsBytes(values.AsSpan()).ToArray();
    }

    /// <summary>Writes config.json, model.safetensors (or two shards with an index), tokenizer and generation files.</summary>
    public static Dictionary<string, byte[]> Write(string folder, bool sharded = false)
    {
        Directory.CreateDirectory(folder);
        File.WriteAllText(Path.Combine(folder, "config.json"), ConfigJson());
        File.WriteAllText(Path.Combine(folder, "tokenizer.json"), "{\"version\": \"1.0\", \"model\": {\"type\": \"BPE\"}}");
        File.WriteAllText(Path.Combine(folder, "generation_config.json"), "{\"bos_token_id\": 1, \"eos_token_id\": 2}");
        var data = new Dictionary<string, byte[]>();
        int seed = 0;
        foreach ((string name, long[] shape) in Layout())
        {
            data[name] = RandomBf16(shape.Aggregate(1L, (a, b) => a * b), ++seed);
        }

        var entries = Layout().Select(t => (new SafeTensorSpec(t.Name, DType.BF16, t.Shape), (ReadOnlyMemory<byte>)data[t.Name])).ToList();
        if (!sharded)
        {
            SafeTensorsWriter.Save(Path.Combine(folder, "model.safetensors"), entries);
            return data;
        }

        var first = entries.Where(e => !e.Item1.Name.Contains("layers.1.", StringComparison.Ordinal)).ToList();
        var second = entries.Except(first).ToList();
        SafeTensorsWriter.Save(Path.Combine(folder, "model-00001-of-00002.safetensors"), first);
        SafeTensorsWriter.Save(Path.Combine(folder, "model-00002-of-00002.safetensors"), second);
        var map = first.ToDictionary(e => e.Item1.Name, _ => "model-00001-of-00002.safetensors");
        foreach (var e in second)
        {
            map[e.Item1.Name] = "model-00002-of-00002.safetensors";
        }

        new SafeTensorsIndex(map).Write(Path.Combine(folder, SafeTensorsIndex.FileName));
        return data;
    }
}
