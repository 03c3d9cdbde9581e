using System.Text.RegularExpressions;

namespace QLoRA.Core.Peft;

/// <summary>
/// A PEFT <c>adapter_config.json</c> for LoRA. Reads what the runtime uses (r, lora_alpha, lora_dropout,
/// target_modules, exclude_modules, use_rslora, rank_pattern, alpha_pattern, layers_to_transform,
/// modules_to_save, base_model_name_or_path, …), rejects options it cannot honour with a clear message
/// (use_dora, bias other than "none", fan_in_fan_out, target_parameters, modules_to_save beyond norms,
/// embeddings and lm_head, …) and ignores the rest. Module matching follows PEFT's rules.
/// </summary>
public sealed partial class LoraConfig
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

    /// <summary>
    /// init_lora_weights as PEFT names it: <c>true</c> (A kaiming-uniform, B zero), <c>gaussian</c> (A ~ N(0, 1/r²), B
    /// zero), <c>false</c> (B random too: for tests), <c>loftq</c>, or another PEFT method (read, but new adapters cannot
    /// be initialized by it). Only matters when new adapters are made.
    /// </summary>
    public string InitLoraWeights { get; init; } = "true";

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

    /// <summary>
    /// True if <paramref name="moduleName"/> is matched by modules_to_save as PEFT matches it: the module name ends with
    /// an entry (a plain suffix, so "norm" also matches every input_layernorm and post_attention_layernorm).
    /// </summary>
    public bool SavesModule(string moduleName) => MatchesModulesToSave(ModulesToSave, moduleName);

    /// <summary>PEFT's modules_to_save match: <paramref name="moduleName"/> ends with one of <paramref name="modulesToSave"/>.</summary>
    public static bool MatchesModulesToSave(IEnumerable<string> modulesToSave, string moduleName) =>
        modulesToSave.Any(m => moduleName.EndsWith(m, StringComparison.Ordinal));

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
}
