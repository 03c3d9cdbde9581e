using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;

namespace QLoRA.Core.Peft;

/// <summary>
/// A PEFT <c>adapter_config.json</c> for LoRA. Reads what the runtime uses (r, lora_alpha, lora_dropout,
/// target_modules, exclude_modules, use_rslora, rank_pattern, alpha_pattern, layers_to_transform,
/// modules_to_save, base_model_name_or_path, …), rejects options it cannot honour with a clear message
/// (use_dora, bias other than "none", fan_in_fan_out, target_parameters, modules_to_save beyond norms,
/// embeddings and lm_head, …) and ignores the rest. Module matching follows PEFT's rules.
/// </summary>
public sealed class LoraConfig
{
    /// <summary>Config file name in an adapter folder.</summary>
    public const string FileName = "adapter_config.json";

    /// <summary>PEFT's special target meaning every linear layer except the output layer.</summary>
    public const string AllLinear = "all-linear";

    /// <summary>Rank r (> 0).</summary>
    public int R { get; init; } = 8;

    /// <summary>lora_alpha; scaling is alpha / r (alpha / √r with rsLoRA).</summary>
    public double LoraAlpha { get; init; } = 8;

    /// <summary>Dropout probability on the adapter input, in [0, 1).</summary>
    public double LoraDropout { get; init; }

    /// <summary>Target module names (matched as exact names or dotted suffixes); null when <see cref="TargetModulesRegex"/> is used.</summary>
    public IReadOnlyList<string>? TargetModules { get; init; }

    /// <summary>Target modules as a regex that must match the whole module name.</summary>
    public string? TargetModulesRegex { get; init; }

    /// <summary>Modules excluded from targeting (names or suffixes).</summary>
    public IReadOnlyList<string>? ExcludeModules { get; init; }

    /// <summary>Excluded modules as a full-match regex.</summary>
    public string? ExcludeModulesRegex { get; init; }

    /// <summary>rsLoRA: scale by alpha / √r.</summary>
    public bool UseRsLora { get; init; }

    /// <summary>Per-module rank overrides: pattern → rank (first matching pattern wins).</summary>
    public IReadOnlyList<KeyValuePair<string, int>> RankPattern { get; init; } = [];

    /// <summary>Per-module alpha overrides: pattern → alpha.</summary>
    public IReadOnlyList<KeyValuePair<string, double>> AlphaPattern { get; init; } = [];

    /// <summary>Whole modules trained and saved beside the adapters (norms, embeddings, lm_head).</summary>
    public IReadOnlyList<string> ModulesToSave { get; init; } = [];

    /// <summary>Only these layer indices are adapted, when set.</summary>
    public IReadOnlyList<int>? LayersToTransform { get; init; }

    /// <summary>The base model the adapter was trained on.</summary>
    public string? BaseModelNameOrPath { get; init; }

    /// <summary>Base model revision, if recorded.</summary>
    public string? Revision { get; init; }

    /// <summary>PEFT task type (CAUSAL_LM).</summary>
    public string TaskType { get; init; } = "CAUSAL_LM";

    /// <summary>Scaling of the default (unpatterned) module.</summary>
    public double Scaling => ScalingFor(LoraAlpha, R);

    /// <summary>True if PEFT would put a LoRA adapter on <paramref name="moduleName"/> (e.g. <c>model.layers.0.self_attn.q_proj</c>).</summary>
    /// <param name="moduleName">Module path relative to the base model.</param>
    /// <param name="isOutputLayer">True for the output projection (lm_head), which <c>all-linear</c> leaves out.</param>
    public bool Targets(string moduleName, bool isOutputLayer = false)
    {
        if (IsExcluded(moduleName))
        {
            return false;
        }

        bool found;
        if (TargetModulesRegex is not null)
        {
            found = FullMatch(TargetModulesRegex, moduleName);
        }
        else if (TargetModules is null)
        {
            return false;
        }
        else if (TargetModules.Count == 1 && TargetModules[0] == AllLinear)
        {
            return !isOutputLayer;
        }
        else
        {
            found = TargetModules.Contains(moduleName);
            if (!found)
            {
                found = TargetModules.Any(t => moduleName.EndsWith("." + t, StringComparison.Ordinal));
                if (found && LayersToTransform is { Count: > 0 })
                {
                    Match m = Regex.Match(moduleName, @"^.*\.[^.]*\.(\d+)\.");
                    found = m.Success && LayersToTransform.Contains(int.Parse(m.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture));
                }
            }
        }

        return found;
    }

    /// <summary>The rank of <paramref name="moduleName"/>: the first rank_pattern entry matching it, else r.</summary>
    public int RankOf(string moduleName) => PatternValue(RankPattern, moduleName, R);

    /// <summary>The alpha of <paramref name="moduleName"/>: the first alpha_pattern entry matching it, else lora_alpha.</summary>
    public double AlphaOf(string moduleName) => PatternValue(AlphaPattern, moduleName, LoraAlpha);

    /// <summary>The scaling s of <paramref name="moduleName"/> in y = base(x) + s·B·A·x.</summary>
    public double ScalingOf(string moduleName) => ScalingFor(AlphaOf(moduleName), RankOf(moduleName));

    /// <summary>True if <paramref name="moduleName"/> is listed in modules_to_save (by name or dotted suffix).</summary>
    public bool SavesModule(string moduleName) =>
        ModulesToSave.Any(m => moduleName == m || moduleName.EndsWith("." + m, StringComparison.Ordinal));

    private double ScalingFor(double alpha, int rank) => UseRsLora ? alpha / Math.Sqrt(rank) : alpha / rank;

    private bool IsExcluded(string moduleName)
    {
        if (ExcludeModulesRegex is not null)
        {
            return FullMatch(ExcludeModulesRegex, moduleName);
        }

        return ExcludeModules is not null
            && (ExcludeModules.Contains(moduleName) || ExcludeModules.Any(e => moduleName.EndsWith("." + e, StringComparison.Ordinal)));
    }

    private static T PatternValue<T>(IReadOnlyList<KeyValuePair<string, T>> patterns, string moduleName, T fallback)
    {
        foreach (KeyValuePair<string, T> entry in patterns)
        {
            if (Regex.IsMatch(moduleName, $@"^(?:.*\.)?(?:{entry.Key})$", RegexOptions.CultureInvariant, TimeSpan.FromSeconds(1)))
            {
                return entry.Value;
            }
        }

        return fallback;
    }

    private static bool FullMatch(string pattern, string input) =>
        Regex.IsMatch(input, $"^(?:{pattern})$", RegexOptions.CultureInvariant, TimeSpan.FromSeconds(1));

    /// <summary>True for module names modules_to_save may hold here: embeddings, lm_head and norms.</summary>
    public static bool IsTrainableWholeModule(string moduleName)
    {
        string last = moduleName[(moduleName.LastIndexOf('.') + 1)..];
        return last is "lm_head" or "embed_tokens" || last.EndsWith("norm", StringComparison.Ordinal);
    }

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
        JsonObject root;
        try
        {
            root = JsonNode.Parse(json) as JsonObject ?? throw new PeftAdapterException(sourcePath, null, "the adapter config must be a JSON object");
        }
        catch (JsonException e)
        {
            throw new PeftAdapterException(sourcePath, null, $"not valid JSON ({e.Message})", e);
        }

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
            RankPattern = f.Pattern<int>("rank_pattern", node => node is JsonValue v && v.TryGetValue(out double d) && d >= 1 && d == Math.Floor(d) ? (int)d : null),
            AlphaPattern = f.Pattern<double>("alpha_pattern", node => node is JsonValue v && v.TryGetValue(out double d) && double.IsFinite(d) ? d : null),
            ModulesToSave = modulesToSave,
            LayersToTransform = f.IntList("layers_to_transform"),
            BaseModelNameOrPath = f.String("base_model_name_or_path"),
            Revision = f.String("revision"),
            TaskType = f.String("task_type") ?? "CAUSAL_LM",
        };
    }

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
            ["init_lora_weights"] = true,
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

    private sealed class ConfigFields(JsonObject root, string path)
    {
        public void Reject(string field, string problem) => throw new PeftAdapterException(path, field, problem);

        public T Reject<T>(string field, string problem) => throw new PeftAdapterException(path, field, problem);

        public string? String(string name) => root[name] switch
        {
            null => null,
            JsonValue v when v.TryGetValue(out string? s) => s,
            var other => Reject<string>(name, $"must be a string, got {other.ToJsonString()}"),
        };

        public bool? Bool(string name) => root[name] switch
        {
            null => null,
            JsonValue v when v.TryGetValue(out bool b) => b,
            var other => Reject<bool?>(name, $"must be true or false, got {other.ToJsonString()}"),
        };

        public double? Number(string name) => root[name] switch
        {
            null => null,
            JsonValue v when v.GetValueKind() == JsonValueKind.Number && double.IsFinite(v.GetValue<double>()) => v.GetValue<double>(),
            var other => Reject<double?>(name, $"must be a number, got {other.ToJsonString()}"),
        };

        public int? PositiveInt(string name)
        {
            double? d = Number(name);
            return d switch
            {
                null => null,
                >= 1 and <= int.MaxValue when d == Math.Floor(d.Value) => (int)d.Value,
                _ => Reject<int?>(name, $"must be a positive integer, got {d}"),
            };
        }

        public IReadOnlyList<string>? StringList(string name) => root[name] switch
        {
            null => null,
            JsonArray a => [.. a.Select(n => n is JsonValue v && v.TryGetValue(out string? s) ? s : Reject<string>(name, $"entries must be strings, got {n?.ToJsonString() ?? "null"}"))],
            var other => Reject<IReadOnlyList<string>>(name, $"must be a list of strings, got {other.ToJsonString()}"),
        };

        public (IReadOnlyList<string>? List, string? Regex) ListOrRegex(string name)
        {
            if (root[name] is JsonValue v && v.TryGetValue(out string? regex))
            {
                try
                {
                    _ = new Regex(regex);
                }
                catch (ArgumentException e)
                {
                    Reject(name, $"'{regex}' is not a valid regular expression ({e.Message})");
                }

                return (null, regex);
            }

            return (StringList(name), null);
        }

        public IReadOnlyList<int>? IntList(string name) => root[name] switch
        {
            null => null,
            JsonValue v when v.TryGetValue(out int i) => [i],
            JsonArray a => [.. a.Select(n => n is JsonValue v && v.TryGetValue(out int i) && i >= 0 ? i : Reject<int>(name, $"entries must be non-negative layer indices, got {n?.ToJsonString() ?? "null"}"))],
            var other => Reject<IReadOnlyList<int>>(name, $"must be a layer index or a list of them, got {other.ToJsonString()}"),
        };

        public IReadOnlyList<KeyValuePair<string, T>> Pattern<T>(string name, Func<JsonNode?, T?> parse)
            where T : struct
        {
            if (root[name] is null)
            {
                return [];
            }

            if (root[name] is not JsonObject obj)
            {
                return Reject<IReadOnlyList<KeyValuePair<string, T>>>(name, "must be an object of module pattern → value");
            }

            var result = new List<KeyValuePair<string, T>>();
            foreach (KeyValuePair<string, JsonNode?> entry in obj)
            {
                T value = parse(entry.Value) ?? Reject<T>(name, $"value for '{entry.Key}' is invalid: {entry.Value?.ToJsonString() ?? "null"}");
                result.Add(new KeyValuePair<string, T>(entry.Key, value));
            }

            return result;
        }
    }
}
