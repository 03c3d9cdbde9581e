using System.Text.Json;
using System.Text.Json.Nodes;

namespace QLoRA.Core.Peft;

/// <summary>Reading and writing adapter_config.json.</summary>
public sealed partial class LoraConfig
{
    /// <summary>Reads and validates <c>adapter_config.json</c> (a file, or a folder holding one).</summary>
    /// <exception cref="FileNotFoundException">No config file.</exception>
    /// <exception cref="PeftAdapterException">Invalid JSON or field, or an option the runtime cannot honour.</exception>
    public static LoraConfig Load(string path)
    {
        string full = Path.GetFullPath(Directory.Exists(path) ? Path.Combine(path, FileName) : path);
        if (!File.Exists(full))
        {
            throw new FileNotFoundException($"{full}: no adapter config.", full);
        }

        return Parse(File.ReadAllText(full), full);
    }

    /// <summary>Parses adapter_config.json text; <paramref name="sourcePath"/> names it in errors.</summary>
    /// <exception cref="PeftAdapterException">As <see cref="Load"/>.</exception>
    public static LoraConfig Parse(string json, string sourcePath = FileName)
    {
        JsonObject root = StrictJson.ParseObject(json, (problem, inner) => new PeftAdapterException(sourcePath, null, $"the adapter config {problem}", inner));

        var f = new ConfigFields(root, sourcePath);
        string peftType = f.String("peft_type") ?? "LORA";
        if (peftType != "LORA")
        {
            f.Reject("peft_type", $"'{peftType}' is not LORA; only LoRA adapters are supported");
        }

        if (f.Bool("use_dora") == true)
        {
            f.Reject("use_dora", "DoRA adapters cannot be run; train or convert a plain LoRA adapter");
        }

        if (f.Bool("use_qalora") == true)
        {
            f.Reject("use_qalora", "QA-LoRA adapters cannot be run");
        }

        if (f.Bool("lora_bias") == true)
        {
            f.Reject("lora_bias", "LoRA bias terms (lora_B bias) are not supported");
        }

        if (f.Bool("fan_in_fan_out") == true)
        {
            f.Reject("fan_in_fan_out", "fan_in_fan_out (Conv1D-style weights) does not apply to Llama-family linear layers");
        }

        string bias = f.String("bias") ?? "none";
        if (bias != "none")
        {
            f.Reject("bias", $"'{bias}' would train base biases; only \"none\" is supported");
        }

        if (root["target_parameters"] is JsonArray { Count: > 0 })
        {
            f.Reject("target_parameters", "LoRA on raw parameters is not supported; use target_modules");
        }

        foreach (string unsupported in new[] { "trainable_token_indices", "alora_invocation_tokens", "layer_replication", "arrow_config" })
        {
            JsonNode? node = root[unsupported];
            bool unset = node is null or JsonArray { Count: 0 } or JsonObject { Count: 0 } || (node is JsonValue v && v.TryGetValue(out bool flag) && !flag);
            if (!unset)
            {
                f.Reject(unsupported, "this option is not supported");
            }
        }

        string? layersPattern = root["layers_pattern"] switch
        {
            null => null,
            JsonValue v when v.TryGetValue(out string? s) => s,
            JsonArray { Count: 1 } a when a[0] is JsonValue v && v.TryGetValue(out string? s) => s,
            JsonArray { Count: 0 } => null,
            _ => f.Reject<string>("layers_pattern", "must be a string or a one-element list"),
        };
        if (layersPattern is not null and not "layers")
        {
            f.Reject("layers_pattern", $"'{layersPattern}' is not supported (Llama-family models keep their blocks in 'layers')");
        }

        int r = f.PositiveInt("r") ?? 8;
        double dropout = f.Number("lora_dropout") ?? 0;
        if (dropout is < 0 or >= 1)
        {
            f.Reject("lora_dropout", $"{dropout} must be in [0, 1)");
        }

        (IReadOnlyList<string>? targets, string? targetRegex) = f.ListOrRegex("target_modules");
        if (targetRegex == AllLinear)
        {
            // PEFT reads the string "all-linear" as the shorthand, not as a regex.
            (targets, targetRegex) = ([AllLinear], null);
        }

        if (targets is null && targetRegex is null)
        {
            f.Reject("target_modules", "missing: the adapter must say which modules it targets");
        }

        (IReadOnlyList<string>? excludes, string? excludeRegex) = f.ListOrRegex("exclude_modules");
        var modulesToSave = f.StringList("modules_to_save") ?? [];
        foreach (string module in modulesToSave)
        {
            if (!IsTrainableWholeModule(module))
            {
                f.Reject("modules_to_save", $"'{module}' cannot be trained as a whole module (supported: embed_tokens, lm_head and norms)");
            }
        }

        return new LoraConfig
        {
            R = r,
            LoraAlpha = f.Number("lora_alpha") ?? 8,
            LoraDropout = dropout,
            TargetModules = targets,
            TargetModulesRegex = targetRegex,
            ExcludeModules = excludes,
            ExcludeModulesRegex = excludeRegex,
            UseRsLora = f.Bool("use_rslora") ?? false,
            InitLoraWeights = root["init_lora_weights"] switch
            {
                null => "true",
                JsonValue v when v.TryGetValue(out bool b) => b ? "true" : "false",
                JsonValue v when v.TryGetValue(out string? method) => method,
                var other => f.Reject<string>("init_lora_weights", $"must be true, false or a method name, got {other.ToJsonString()}"),
            },
            RankPattern = f.Pattern<int>("rank_pattern", node => node is JsonValue v && v.TryGetValue(out double d) && d >= 1 && d == Math.Floor(d) ? (int)d : null),
            AlphaPattern = f.Pattern<double>("alpha_pattern", node => node is JsonValue v && v.TryGetValue(out double d) && double.IsFinite(d) ? d : null),
            ModulesToSave = modulesToSave,
            LayersToTransform = f.IntList("layers_to_transform"),
            BaseModelNameOrPath = f.String("base_model_name_or_path"),
            Revision = f.String("revision"),
            TaskType = f.String("task_type") ?? "CAUSAL_LM",
        };
    }
}
