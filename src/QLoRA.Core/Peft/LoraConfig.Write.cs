using System.Text.Json;
using System.Text.Json.Nodes;

namespace QLoRA.Core.Peft;

/// <summary>Writing adapter_config.json as PEFT does.</summary>
public sealed partial class LoraConfig
{
    /// <summary>The adapter_config.json text PEFT 0.21 writes for this config (all its keys, sorted, indent 2).</summary>
    public string ToJson()
    {
        var o = new SortedDictionary<string, JsonNode?>(StringComparer.Ordinal)
        {
            ["alora_invocation_tokens"] = null,
            ["alpha_pattern"] = PatternObject(AlphaPattern.Select(p => new KeyValuePair<string, JsonNode?>(p.Key, JsonValue.Create(p.Value)))),
            ["arrow_config"] = null,
            ["auto_mapping"] = null,
            ["base_model_name_or_path"] = BaseModelNameOrPath,
            ["bias"] = "none",
            ["corda_config"] = null,
            ["ensure_weight_tying"] = false,
            ["eva_config"] = null,
            ["exclude_modules"] = ExcludeModulesRegex is not null ? JsonValue.Create(ExcludeModulesRegex) : ExcludeModules is null ? null : new JsonArray([.. ExcludeModules.Order(StringComparer.Ordinal).Select(s => (JsonNode?)s)]),
            ["fan_in_fan_out"] = false,
            ["inference_mode"] = true,
            ["init_lora_weights"] = InitLoraWeights switch { "true" => JsonValue.Create(true), "false" => JsonValue.Create(false), var method => JsonValue.Create(method) },
            ["layer_replication"] = null,
            ["layers_pattern"] = null,
            ["layers_to_transform"] = LayersToTransform is null ? null : new JsonArray([.. LayersToTransform.Select(i => (JsonNode?)i)]),
            ["loftq_config"] = new JsonObject(),
            ["lora_alpha"] = LoraAlpha == Math.Floor(LoraAlpha) ? JsonValue.Create((long)LoraAlpha) : JsonValue.Create(LoraAlpha),
            ["lora_bias"] = false,
            ["lora_dropout"] = LoraDropout,
            ["megatron_config"] = null,
            ["megatron_core"] = "megatron.core",
            ["modules_to_save"] = ModulesToSave.Count == 0 ? null : new JsonArray([.. ModulesToSave.Select(s => (JsonNode?)s)]),
            ["peft_type"] = "LORA",
            ["peft_version"] = "0.21.0",
            ["qalora_group_size"] = 16,
            ["r"] = R,
            ["rank_pattern"] = PatternObject(RankPattern.Select(p => new KeyValuePair<string, JsonNode?>(p.Key, JsonValue.Create(p.Value)))),
            ["revision"] = Revision,
            ["target_modules"] = TargetModulesRegex is not null ? JsonValue.Create(TargetModulesRegex) : new JsonArray([.. (TargetModules ?? []).Order(StringComparer.Ordinal).Select(s => (JsonNode?)s)]),
            ["target_parameters"] = null,
            ["task_type"] = TaskType,
            ["trainable_token_indices"] = null,
            ["use_dora"] = false,
            ["use_qalora"] = false,
            ["use_rslora"] = UseRsLora,
        };
        var root = new JsonObject();
        foreach (KeyValuePair<string, JsonNode?> entry in o)
        {
            root[entry.Key] = entry.Value;
        }

        return root.ToJsonString(new JsonSerializerOptions { WriteIndented = true, IndentSize = 2 });
    }

    private static JsonObject PatternObject(IEnumerable<KeyValuePair<string, JsonNode?>> entries)
    {
        var obj = new JsonObject();
        foreach (KeyValuePair<string, JsonNode?> e in entries)
        {
            obj[e.Key] = e.Value;
        }

        return obj;
    }
}
