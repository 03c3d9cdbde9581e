using System.Text.Json;
using System.Text.Json.Nodes;
using QLoRA.Core.HuggingFace;

namespace QLoRA.Modeling;

/// <summary>Resolves the dimensions generated models declare: integers as they are, strings as config.json fields.</summary>
public sealed class ModelDimensions(JsonObject config, string source)
{
    /// <summary>From a loaded config.</summary>
    public ModelDimensions(HfModelConfig config)
        : this(config.Raw, config.SourcePath)
    {
    }

    /// <summary>Where the fields come from (named in errors).</summary>
    public string Source { get; } = source;

    /// <summary>
    /// The positive integer a dimension stands for: a config.json field, or one of the derived names <c>head_dim</c>
    /// (hidden_size / num_attention_heads when absent), <c>q_dim</c> (heads × head_dim) and <c>kv_dim</c>
    /// (num_key_value_heads × head_dim, the rows of k_proj and v_proj).
    /// </summary>
    /// <exception cref="HfConfigException">A named field is missing or not a positive integer.</exception>
    public int Get(string field)
    {
        switch (field)
        {
            case "head_dim" when config["head_dim"] is null:
                return Get("hidden_size") / Get("num_attention_heads");
            case "q_dim" when config["q_dim"] is null:
                return Get("num_attention_heads") * Get("head_dim");
            case "kv_dim" when config["kv_dim"] is null:
                return (config["num_key_value_heads"] is null ? Get("num_attention_heads") : Get("num_key_value_heads")) * Get("head_dim");
        }

        if (config[field] is JsonValue value && value.GetValueKind() == JsonValueKind.Number && value.GetValue<double>() is double d && d >= 1 && d == Math.Floor(d) && d <= int.MaxValue)
        {
            return (int)d;
        }

        throw new HfConfigException(Source, field, config[field] is null ? "missing: the model definition uses it as a dimension" : $"must be a positive integer, got {config[field]!.ToJsonString()}");
    }

    /// <summary>A constant dimension (validated at compile time; returned as is).</summary>
    public int Get(int constant) => constant;

    /// <summary>A float field with a default (e.g. rms_norm_eps).</summary>
    public double Get(string field, double fallback) =>
        config[field] is JsonValue value && value.GetValueKind() == JsonValueKind.Number ? value.GetValue<double>() : fallback;

    /// <summary>A boolean field with a default (e.g. tie_word_embeddings).</summary>
    public bool Flag(string field, bool fallback) =>
        config[field] is JsonValue value && value.GetValueKind() is JsonValueKind.True or JsonValueKind.False ? value.GetValue<bool>() : fallback;
}
