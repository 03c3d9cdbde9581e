using System.Text.Json;
using System.Text.Json.Nodes;

namespace QLoRA.Core.HuggingFace;

/// <summary>
/// A Llama-family config.json (model_type llama, mistral or qwen2) reduced to the fields the runtime uses. Both
/// generations of the format load: transformers 4.x (<c>rope_theta</c>, <c>rope_scaling</c>, <c>torch_dtype</c>) and
/// 5.x (<c>rope_parameters</c>, <c>dtype</c>). Other fields are ignored; defaults are transformers' for the model type.
/// </summary>
public sealed class HfModelConfig
{
    /// <summary>Model types the runtime can run.</summary>
    public static IReadOnlyList<string> SupportedModelTypes { get; } = ["llama", "mistral", "qwen2"];

    private HfModelConfig()
    {
    }

    /// <summary>The file this was read from (or a label for parsed text).</summary>
    public string SourcePath { get; private init; } = "";

    /// <summary><c>model_type</c>: llama, mistral or qwen2.</summary>
    public string ModelType { get; private init; } = "";

    /// <summary><c>hidden_size</c>.</summary>
    public int HiddenSize { get; private init; }

    /// <summary><c>intermediate_size</c> (MLP width).</summary>
    public int IntermediateSize { get; private init; }

    /// <summary><c>num_hidden_layers</c>.</summary>
    public int NumHiddenLayers { get; private init; }

    /// <summary><c>num_attention_heads</c>.</summary>
    public int NumAttentionHeads { get; private init; }

    /// <summary><c>num_key_value_heads</c> (defaults to the attention heads).</summary>
    public int NumKeyValueHeads { get; private init; }

    /// <summary><c>head_dim</c> (defaults to hidden_size / num_attention_heads).</summary>
    public int HeadDim { get; private init; }

    /// <summary><c>vocab_size</c>.</summary>
    public int VocabSize { get; private init; }

    /// <summary><c>rms_norm_eps</c>.</summary>
    public double RmsNormEps { get; private init; }

    /// <summary><c>max_position_embeddings</c>.</summary>
    public int MaxPositionEmbeddings { get; private init; }

    /// <summary>RoPE base and scaling.</summary>
    public RopeParameters Rope { get; private init; } = new(RopeType.Default, 10000);

    /// <summary><c>tie_word_embeddings</c>: lm_head shares the embedding matrix.</summary>
    public bool TieWordEmbeddings { get; private init; }

    /// <summary>q/k/v projections have a bias (llama <c>attention_bias</c>; always for qwen2).</summary>
    public bool QkvBias { get; private init; }

    /// <summary>o_proj has a bias (llama <c>attention_bias</c>).</summary>
    public bool OutputBias { get; private init; }

    /// <summary><c>mlp_bias</c> (llama).</summary>
    public bool MlpBias { get; private init; }

    /// <summary>Mistral's <c>sliding_window</c> (each token sees at most this many keys), or null for full causal attention.</summary>
    public int? SlidingWindow { get; private init; }

    /// <summary><c>torch_dtype</c> or <c>dtype</c>, if given.</summary>
    public DType? Dtype { get; private init; }

    /// <summary>Rows of q_proj: heads × head_dim.</summary>
    public int QueryDim => NumAttentionHeads * HeadDim;

    /// <summary>Rows of k_proj and v_proj: kv heads × head_dim.</summary>
    public int KeyValueDim => NumKeyValueHeads * HeadDim;

    /// <summary>The whole JSON, kept so tools can rewrite the file without losing fields.</summary>
    public JsonObject Raw { get; private init; } = [];

    /// <summary>Reads and validates a config.json.</summary>
    /// <exception cref="FileNotFoundException">No such file.</exception>
    /// <exception cref="HfConfigException">Invalid JSON, a missing or invalid field, or a model/rope type the runtime cannot run.</exception>
    public static HfModelConfig Load(string path)
    {
        string full = Path.GetFullPath(path);
        if (!File.Exists(full))
        {
            throw new FileNotFoundException($"{full}: no such config file.", full);
        }

        return Parse(File.ReadAllText(full), full);
    }

    /// <summary>Parses config.json text; <paramref name="sourcePath"/> names it in errors.</summary>
    /// <exception cref="HfConfigException">As <see cref="Load"/>.</exception>
    public static HfModelConfig Parse(string json, string sourcePath = "config.json")
    {
        JsonObject root = StrictJson.ParseObject(json, (problem, inner) => new HfConfigException(sourcePath, null, $"the config {problem}", inner));

        var r = new FieldReader(root, sourcePath);
        string modelType = r.String("model_type") ?? throw new HfConfigException(sourcePath, "model_type", "missing: the runtime needs to know the architecture");
        if (!SupportedModelTypes.Contains(modelType))
        {
            throw new HfConfigException(sourcePath, "model_type", $"'{modelType}' cannot be run (supported: {string.Join(", ", SupportedModelTypes)})");
        }

        int hidden = r.RequiredPositiveInt("hidden_size");
        int heads = r.RequiredPositiveInt("num_attention_heads");
        int kvHeads = r.PositiveInt("num_key_value_heads") ?? heads;
        if (heads % kvHeads != 0)
        {
            throw new HfConfigException(sourcePath, "num_key_value_heads", $"{kvHeads} does not divide num_attention_heads {heads}");
        }

        int? headDimField = r.PositiveInt("head_dim");
        if (headDimField is null && hidden % heads != 0)
        {
            throw new HfConfigException(sourcePath, "num_attention_heads", $"{heads} does not divide hidden_size {hidden} and no head_dim is given");
        }

        int headDim = headDimField ?? (hidden / heads);
        if (headDim % 2 != 0)
        {
            throw new HfConfigException(sourcePath, headDimField is null ? "hidden_size" : "head_dim", $"head dimension {headDim} must be even for rotary embeddings");
        }

        bool attentionBias = r.Bool("attention_bias") ?? false;
        (int defaultMaxPositions, bool qkvBias, bool outputBias) = modelType switch
        {
            "mistral" => (4096 * 32, false, false),
            "qwen2" => (32768, true, false),
            _ => (2048, attentionBias, attentionBias),
        };

        DType? dtype = null;
        string dtypeField = root.ContainsKey("dtype") ? "dtype" : "torch_dtype";
        if (r.String(dtypeField) is string dtypeName)
        {
            if (!DTypeInfo.TryParseTorchName(dtypeName, out DType parsed) || !parsed.IsQuantizableFloat())
            {
                throw new HfConfigException(sourcePath, dtypeField, $"'{dtypeName}' is not bfloat16, float16 or float32");
            }

            dtype = parsed;
        }

        return new HfModelConfig
        {
            SourcePath = sourcePath,
            ModelType = modelType,
            HiddenSize = hidden,
            IntermediateSize = r.RequiredPositiveInt("intermediate_size"),
            NumHiddenLayers = r.RequiredPositiveInt("num_hidden_layers"),
            NumAttentionHeads = heads,
            NumKeyValueHeads = kvHeads,
            HeadDim = headDim,
            VocabSize = r.RequiredPositiveInt("vocab_size"),
            RmsNormEps = r.PositiveDouble("rms_norm_eps") ?? 1e-6,
            MaxPositionEmbeddings = r.PositiveInt("max_position_embeddings") ?? defaultMaxPositions,
            Rope = ReadRope(root, r, sourcePath),
            TieWordEmbeddings = r.Bool("tie_word_embeddings") ?? false,
            QkvBias = qkvBias,
            OutputBias = outputBias,
            MlpBias = modelType == "llama" && (r.Bool("mlp_bias") ?? false),
            Dtype = dtype,
            SlidingWindow = ReadSlidingWindow(modelType, r, sourcePath),
            Raw = root,
        };
    }

    private static int? ReadSlidingWindow(string modelType, FieldReader r, string path)
    {
        if (modelType == "mistral")
        {
            return r.PositiveInt("sliding_window");
        }

        if (modelType == "qwen2" && r.Bool("use_sliding_window") == true)
        {
            throw new HfConfigException(path, "use_sliding_window", "qwen2's per-layer sliding window cannot be run; set it to false");
        }

        return null;
    }

    private static RopeParameters ReadRope(JsonObject root, FieldReader r, string path)
    {
        // transformers 5.x: everything under rope_parameters; 4.x: rope_theta at top level plus rope_scaling.
        if (root["rope_parameters"] is JsonObject parameters)
        {
            var p = new FieldReader(parameters, path, "rope_parameters.");
            double theta = p.PositiveDouble("rope_theta") ?? r.PositiveDouble("rope_theta") ?? 10000;
            return ReadScaling(p, path, "rope_parameters", theta);
        }

        if (root.ContainsKey("rope_parameters") && root["rope_parameters"] is not null)
        {
            throw new HfConfigException(path, "rope_parameters", "must be an object");
        }

        double topTheta = r.PositiveDouble("rope_theta") ?? 10000;
        return root["rope_scaling"] switch
        {
            null => new RopeParameters(RopeType.Default, topTheta),
            JsonObject scaling => ReadScaling(new FieldReader(scaling, path, "rope_scaling."), path, "rope_scaling", topTheta),
            _ => throw new HfConfigException(path, "rope_scaling", "must be an object or null"),
        };
    }

    private static RopeParameters ReadScaling(FieldReader s, string path, string field, double theta)
    {
        string type = s.String("rope_type") ?? s.String("type") ?? "default";
        switch (type)
        {
            case "default":
                return new RopeParameters(RopeType.Default, theta);
            case "llama3":
                double factor = s.RequiredPositiveDouble("factor");
                double low = s.RequiredPositiveDouble("low_freq_factor");
                double high = s.RequiredPositiveDouble("high_freq_factor");
                if (high <= low)
                {
                    throw new HfConfigException(path, field + ".high_freq_factor", $"{high} must exceed low_freq_factor {low}");
                }

                int original = s.RequiredPositiveInt("original_max_position_embeddings");
                return new RopeParameters(RopeType.Llama3, theta, factor, low, high, original);
            default:
                throw new HfConfigException(path, field + ".rope_type", $"'{type}' cannot be run (supported: default, llama3)");
        }
    }

    private sealed class FieldReader(JsonObject obj, string path, string prefix = "")
    {
        public string? String(string name) => obj[name] switch
        {
            null => null,
            JsonValue v when v.TryGetValue(out string? s) => s,
            var other => throw new HfConfigException(path, prefix + name, $"must be a string, got {other.ToJsonString()}"),
        };

        public bool? Bool(string name) => obj[name] switch
        {
            null => null,
            JsonValue v when v.TryGetValue(out bool b) => b,
            var other => throw new HfConfigException(path, prefix + name, $"must be true or false, got {other.ToJsonString()}"),
        };

        public int? PositiveInt(string name)
        {
            JsonNode? node = obj[name];
            if (node is null)
            {
                return null;
            }

            if (node is JsonValue v && v.GetValueKind() == JsonValueKind.Number)
            {
                double d = v.GetValue<double>();
                if (d >= 1 && d <= int.MaxValue && d == Math.Floor(d))
                {
                    return (int)d;
                }
            }

            throw new HfConfigException(path, prefix + name, $"must be a positive integer, got {node.ToJsonString()}");
        }

        public int RequiredPositiveInt(string name) =>
            PositiveInt(name) ?? throw new HfConfigException(path, prefix + name, "missing required field");

        public double? PositiveDouble(string name)
        {
            JsonNode? node = obj[name];
            if (node is null)
            {
                return null;
            }

            if (node is JsonValue v && v.GetValueKind() == JsonValueKind.Number)
            {
                double d = v.GetValue<double>();
                if (d > 0 && double.IsFinite(d))
                {
                    return d;
                }
            }

            throw new HfConfigException(path, prefix + name, $"must be a positive number, got {node.ToJsonString()}");
        }

        public double RequiredPositiveDouble(string name) =>
            PositiveDouble(name) ?? throw new HfConfigException(path, prefix + name, "missing required field");
    }
}
