using System.Text.Json.Nodes;
using QLoRA.Core.Peft;

namespace QLoRA.Core.Tests.Peft;

public class LoraConfigTests
{
    // adapter_config.json as peft 0.21 writes it (unused keys included).
    internal const string Peft021 = """
    {
      "alora_invocation_tokens": null, "alpha_pattern": {"o_proj": 64}, "arrow_config": null, "auto_mapping": null,
      "base_model_name_or_path": "meta-llama/Llama-3.2-1B", "bias": "none", "corda_config": null,
      "ensure_weight_tying": false, "eva_config": null, "exclude_modules": null, "fan_in_fan_out": false,
      "inference_mode": true, "init_lora_weights": true, "layer_replication": null, "layers_pattern": null,
      "layers_to_transform": null, "loftq_config": {}, "lora_alpha": 32, "lora_bias": false, "lora_dropout": 0.05,
      "megatron_config": null, "megatron_core": "megatron.core", "modules_to_save": null, "peft_type": "LORA",
      "peft_version": "0.21.0", "qalora_group_size": 16, "r": 16,
      "rank_pattern": {"model.layers.1.self_attn.v_proj": 4, "q_proj": 8}, "revision": null,
      "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
      "target_parameters": null, "task_type": "CAUSAL_LM", "trainable_token_indices": null,
      "use_dora": false, "use_qalora": false, "use_rslora": false, "some_future_key": {"x": 1}
    }
    """;

    [Fact]
    public void Peft021ConfigLoadsAndIgnoresUnusedKeys()
    {
        LoraConfig c = LoraConfig.Parse(Peft021);
        Assert.Equal(16, c.R);
        Assert.Equal(32, c.LoraAlpha);
        Assert.Equal(0.05, c.LoraDropout);
        Assert.Equal("meta-llama/Llama-3.2-1B", c.BaseModelNameOrPath);
        Assert.Equal(7, c.TargetModules!.Count);
        Assert.Equal(2.0, c.Scaling);
    }

    [Fact]
    public void TargetListMatchesExactNamesAndDottedSuffixesOnly()
    {
        LoraConfig c = LoraConfig.Parse(Peft021);
        Assert.True(c.Targets("model.layers.0.self_attn.q_proj"));
        Assert.True(c.Targets("model.layers.15.mlp.down_proj"));
        Assert.True(c.Targets("q_proj"));
        Assert.False(c.Targets("model.layers.0.self_attn.xq_proj"));
        Assert.False(c.Targets("model.layers.0.input_layernorm"));
        Assert.False(c.Targets("lm_head"));
    }

    [Fact]
    public void RegexTargetMustMatchTheWholeName()
    {
        LoraConfig c = LoraConfig.Parse("""{"r": 4, "target_modules": ".*\\.(q|v)_proj"}""");
        Assert.Equal(@".*\.(q|v)_proj", c.TargetModulesRegex);
        Assert.True(c.Targets("model.layers.3.self_attn.v_proj"));
        Assert.False(c.Targets("model.layers.3.self_attn.k_proj"));
        Assert.False(c.Targets("model.layers.3.self_attn.v_proj.extra"));
    }

    [Fact]
    public void AllLinearLeavesOutTheOutputLayer()
    {
        foreach (string targets in new[] { """["all-linear"]""", "\"all-linear\"" }) // the string is PEFT's shorthand, not a regex
        {
            LoraConfig c = LoraConfig.Parse($$"""{"r": 4, "target_modules": {{targets}}}""");
            Assert.True(c.Targets("model.layers.0.mlp.up_proj"));
            Assert.False(c.Targets("lm_head", isOutputLayer: true));
            Assert.Null(c.TargetModulesRegex);
        }
    }

    [Fact]
    public void LayersToTransformAndExcludeModulesNarrowTheTargets()
    {
        LoraConfig c = LoraConfig.Parse("""{"r": 4, "target_modules": ["q_proj", "v_proj"], "layers_to_transform": [0, 2], "exclude_modules": ["model.layers.2.self_attn.v_proj"]}""");
        Assert.True(c.Targets("model.layers.0.self_attn.q_proj"));
        Assert.False(c.Targets("model.layers.1.self_attn.q_proj"));
        Assert.True(c.Targets("model.layers.2.self_attn.q_proj"));
        Assert.False(c.Targets("model.layers.2.self_attn.v_proj"));
        LoraConfig single = LoraConfig.Parse("""{"r": 4, "target_modules": ["q_proj"], "layers_to_transform": 1, "layers_pattern": "layers"}""");
        Assert.True(single.Targets("model.layers.1.self_attn.q_proj"));
        Assert.False(single.Targets("model.layers.11.self_attn.q_proj"));
    }

    [Fact]
    public void RankAndAlphaPatternsOverrideByFirstMatch()
    {
        LoraConfig c = LoraConfig.Parse(Peft021);
        Assert.Equal(8, c.RankOf("model.layers.0.self_attn.q_proj"));
        Assert.Equal(4, c.RankOf("model.layers.1.self_attn.v_proj"));
        Assert.Equal(16, c.RankOf("model.layers.11.self_attn.v_proj"));
        Assert.Equal(16, c.RankOf("model.layers.0.mlp.up_proj"));
        Assert.Equal(64, c.AlphaOf("model.layers.0.self_attn.o_proj"));
        Assert.Equal(64.0 / 16, c.ScalingOf("model.layers.0.self_attn.o_proj"));
        Assert.Equal(32.0 / 8, c.ScalingOf("model.layers.0.self_attn.q_proj"));
        LoraConfig rs = LoraConfig.Parse("""{"r": 16, "lora_alpha": 8, "use_rslora": true, "target_modules": ["q_proj"]}""");
        Assert.Equal(8 / 4.0, rs.Scaling);
    }

    [Fact]
    public void ModulesToSaveAcceptsNormsEmbeddingsAndLmHead()
    {
        LoraConfig c = LoraConfig.Parse("""{"r": 4, "target_modules": ["q_proj"], "modules_to_save": ["lm_head", "embed_tokens", "norm", "input_layernorm"]}""");
        Assert.True(c.SavesModule("lm_head"));
        Assert.True(c.SavesModule("model.layers.3.input_layernorm"));
        Assert.False(c.SavesModule("model.layers.3.mlp"));

        // PEFT matches a plain suffix of the module name: "norm" takes the blocks' norms too, "layernorm" both of theirs.
        LoraConfig norms = LoraConfig.Parse("""{"r": 4, "target_modules": ["q_proj"], "modules_to_save": ["norm"]}""");
        Assert.True(norms.SavesModule("model.norm"));
        Assert.True(norms.SavesModule("model.layers.0.post_attention_layernorm"));
        Assert.False(norms.SavesModule("lm_head"));
        Assert.False(norms.SavesModule("model.embed_tokens"));
    }

    public static TheoryData<string, string, string> Rejected() => new()
    {
        { """{"r": 4, "target_modules": ["q_proj"], "use_dora": true}""", "use_dora", "DoRA" },
        { """{"r": 4, "target_modules": ["q_proj"], "bias": "all"}""", "bias", "\"none\"" },
        { """{"peft_type": "IA3", "target_modules": ["q_proj"]}""", "peft_type", "only LoRA" },
        { """{"r": 4, "target_modules": ["q_proj"], "modules_to_save": ["classifier"]}""", "modules_to_save", "'classifier'" },
        { """{"r": 4, "target_modules": ["q_proj"], "target_parameters": ["mlp.experts.gate_up_proj"]}""", "target_parameters", "raw parameters" },
        { """{"r": 4, "target_modules": ["q_proj"], "fan_in_fan_out": true}""", "fan_in_fan_out", "Conv1D" },
        { """{"r": 4, "target_modules": ["q_proj"], "use_qalora": true}""", "use_qalora", "QA-LoRA" },
        { """{"r": 4, "target_modules": ["q_proj"], "lora_bias": true}""", "lora_bias", "bias" },
        { """{"r": 4, "target_modules": ["q_proj"], "trainable_token_indices": [1, 2]}""", "trainable_token_indices", "not supported" },
        { """{"r": 4, "target_modules": ["q_proj"], "layers_pattern": "h"}""", "layers_pattern", "'h'" },
        { """{"r": 4}""", "target_modules", "missing" },
        { """{"r": 0, "target_modules": ["q_proj"]}""", "r", "positive integer" },
        { """{"r": 4.5, "target_modules": ["q_proj"]}""", "r", "positive integer" },
        { """{"r": 4, "target_modules": ["q_proj"], "lora_dropout": 1.5}""", "lora_dropout", "[0, 1)" },
        { """{"r": 4, "target_modules": "(q_proj"}""", "target_modules", "regular expression" },
        { """{"r": 4, "target_modules": [1, 2]}""", "target_modules", "strings" },
        { """{"r": 4, "target_modules": ["q_proj"], "rank_pattern": {"q_proj": "eight"}}""", "rank_pattern", "'q_proj'" },
        { """{"r": 4, "target_modules": ["q_proj"], "rank_pattern": [1]}""", "rank_pattern", "object" },
        { "{\"r\": 4,", null!, "not valid JSON" },
    };

    [Theory]
    [MemberData(nameof(Rejected))]
    public void UnhonourableOrInvalidOptionsAreRejectedByName(string json, string? field, string message)
    {
        var e = Assert.Throws<PeftAdapterException>(() => LoraConfig.Parse(json, "/adapters/a/adapter_config.json"));
        Assert.Equal(field, e.ItemName);
        Assert.Contains(message, e.Message);
        Assert.StartsWith("/adapters/a/adapter_config.json", e.Message);
    }

    [Fact]
    public void ToJsonWritesPeftsKeySetSortedAndParsesBackTheSame()
    {
        LoraConfig c = LoraConfig.Parse(Peft021);
        string json = c.ToJson();
        JsonObject obj = JsonNode.Parse(json)!.AsObject();
        Assert.True(obj.Count >= 36, $"{obj.Count} keys");
        Assert.Equal(obj.Select(p => p.Key).Order(StringComparer.Ordinal), obj.Select(p => p.Key));
        Assert.Equal("LORA", obj["peft_type"]!.GetValue<string>());
        Assert.Equal(32, obj["lora_alpha"]!.GetValue<int>());
        Assert.Contains("\n  \"r\": 16", json);
        LoraConfig back = LoraConfig.Parse(json);
        Assert.Equal(c.R, back.R);
        Assert.Equal(c.LoraAlpha, back.LoraAlpha);
        Assert.Equal(c.TargetModules!.Order(), back.TargetModules!);
        Assert.Equal(c.RankPattern, back.RankPattern);
        Assert.Equal(c.AlphaPattern, back.AlphaPattern);
        Assert.Equal(c.BaseModelNameOrPath, back.BaseModelNameOrPath);
    }
}
