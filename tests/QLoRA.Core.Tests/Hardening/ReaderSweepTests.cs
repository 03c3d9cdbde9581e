using System.Text.Json.Nodes;
using QLoRA.Core.HuggingFace;
using QLoRA.Core.Manifest;
using QLoRA.Core.Peft;
using QLoRA.Core.SafeTensors;

namespace QLoRA.Core.Tests.Hardening;

/// <summary>
/// A seeded sweep over the JSON readers: every field of a valid file replaced by hostile values (huge, negative,
/// fractional, of another type, null, absent, repeated), plus truncations. The only exception allowed is the reader's
/// typed one (a <see cref="CheckpointFormatException"/>), never an OverflowException, InvalidOperationException, …
/// </summary>
public sealed class ReaderSweepTests(ITestOutputHelper output)
{
    private const string Config = """
        {"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 128, "max_position_embeddings": 256,
         "model_type": "llama", "num_attention_heads": 4, "num_hidden_layers": 2, "num_key_value_heads": 2, "head_dim": 16,
         "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
         "high_freq_factor": 4.0, "original_max_position_embeddings": 128}, "tie_word_embeddings": false, "torch_dtype": "bfloat16",
         "vocab_size": 256, "attention_bias": false, "mlp_bias": false, "bos_token_id": 1, "eos_token_id": [2, 3]}
        """;

    private const string AdapterConfig = """
        {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "lora_dropout": 0.05, "target_modules": ["q_proj", "v_proj"],
         "bias": "none", "use_rslora": false, "use_dora": false, "task_type": "CAUSAL_LM", "rank_pattern": {"q_proj": 4},
         "alpha_pattern": {"v_proj": 8}, "layers_to_transform": [0, 1], "modules_to_save": ["lm_head"], "fan_in_fan_out": false,
         "base_model_name_or_path": "tiny", "revision": null, "exclude_modules": null}
        """;

    private const string Manifest = """
        {"version": 1, "model": "tiny", "config": {"hidden_size": 64}, "tied": [],
         "tensors": {"model.layers.0.mlp.up_proj.weight": {"shape": [128, 64], "stored": "nf4", "blocksize": 64, "double_quant": true, "source_xxh3": "00"}}}
        """;

    private const string Index = """
        {"metadata": {"total_size": 16}, "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
        """;

    private static readonly JsonNode?[] Hostile =
    [
        null, JsonValue.Create(-1), JsonValue.Create(0), JsonValue.Create(1.5), JsonValue.Create(1e39), JsonValue.Create(-1e308),
        JsonValue.Create(long.MaxValue), JsonValue.Create(9.3e18), JsonValue.Create(2147483648L), JsonValue.Create("x"),
        JsonValue.Create(""), JsonValue.Create(true), new JsonArray(), new JsonArray(1, -2), new JsonObject(), new JsonArray(new JsonArray()),
    ];

    // Every (field path, hostile value) variant of a document, and each field removed.
    private static IEnumerable<string> Variants(string json)
    {
        var root = JsonNode.Parse(json)!;
        var paths = new List<string[]>();
        void Walk(JsonNode node, List<string> path)
        {
            if (node is JsonObject o)
                foreach (var (k, v) in o.ToList())
                {
                    paths.Add([.. path, k]);
                    if (v is JsonObject or JsonArray) Walk(v, [.. path, k]);
                }
            else if (node is JsonArray a)
                for (int i = 0; i < a.Count; i++)
                {
                    paths.Add([.. path, "#" + i]);
                    if (a[i] is JsonObject or JsonArray) Walk(a[i]!, [.. path, "#" + i]);
                }
        }
        Walk(root, []);
        foreach (var path in paths)
        {
            foreach (var value in Hostile.Append(new JsonObject { ["removed"] = true }))
            {
                var copy = JsonNode.Parse(json)!;
                JsonNode parent = copy;
                foreach (var step in path[..^1]) parent = step.StartsWith('#') ? parent[int.Parse(step[1..])]! : parent[step]!;
                string last = path[^1];
                bool remove = value is JsonObject r && r.ContainsKey("removed");
                if (last.StartsWith('#'))
                {
                    var arr = parent.AsArray();
                    int i = int.Parse(last[1..]);
                    if (remove) arr.RemoveAt(i); else arr[i] = value?.DeepClone();
                }
                else
                {
                    var obj = parent.AsObject();
                    if (remove) obj.Remove(last); else obj[last] = value?.DeepClone();
                }
                yield return copy.ToJsonString();
            }
        }
        // A repeated key at the top level, and truncations.
        yield return json.TrimEnd().TrimEnd('}') + ", \"" + ((JsonObject)root).First().Key + "\": 1}";
        for (int cut = 1; cut < json.Length; cut += 7) yield return json[..cut];
    }

    private int Sweep(string name, string json, Action<string> read)
    {
        int variants = 0, typed = 0;
        foreach (var v in Variants(json))
        {
            variants++;
            try
            {
                read(v);
            }
            catch (CheckpointFormatException)
            {
                typed++;
            }
            catch (Exception e)
            {
                Assert.Fail($"{name}: {e.GetType().Name} ({e.Message}) for {v}");
            }
        }
        output.WriteLine($"{name}: {variants} variants, {typed} refused with the typed error, the rest accepted");
        return variants;
    }

    private static string Write(string fileName, string text)
    {
        string path = Path.Combine(TestSupport.TempDir(), fileName);
        File.WriteAllText(path, text);
        return path;
    }

    [Fact]
    public void Config_json_variants_fail_only_with_the_typed_error()
    {
        Assert.True(Sweep("config.json", Config, v => HfModelConfig.Parse(v, "config.json")) > 300);
    }

    [Fact]
    public void Adapter_config_variants_fail_only_with_the_typed_error()
    {
        Assert.True(Sweep("adapter_config.json", AdapterConfig, v => LoraConfig.Parse(v, "adapter_config.json")) > 300);
    }

    [Fact]
    public void Manifest_variants_fail_only_with_the_typed_error()
    {
        Assert.True(Sweep("tiny.qlora.json", Manifest, v => WeightsManifest.Read(Write("tiny.qlora.json", v))) > 100);
    }

    [Fact]
    public void Shard_index_variants_fail_only_with_the_typed_error()
    {
        Assert.True(Sweep("model.safetensors.index.json", Index, v => SafeTensorsIndex.Read(Write("model.safetensors.index.json", v))) > 50);
    }
}
