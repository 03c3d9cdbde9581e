using QLoRA.Core.HuggingFace;

namespace QLoRA.Core.Tests.HuggingFace;

public class HfModelConfigTests
{
    // Llama 3.1 8B's config as transformers 4.x saves it.
    private const string Llama31V4 = """
    {
      "architectures": ["LlamaForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
      "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009], "hidden_act": "silu",
      "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 14336,
      "max_position_embeddings": 131072, "mlp_bias": false, "model_type": "llama",
      "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8, "pretraining_tp": 1,
      "rms_norm_eps": 1e-05,
      "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192, "rope_type": "llama3"},
      "rope_theta": 500000.0, "tie_word_embeddings": false, "torch_dtype": "bfloat16",
      "transformers_version": "4.43.0.dev0", "use_cache": true, "vocab_size": 128256
    }
    """;

    // Llama 3.2 1B as transformers 5.x saves it: rope_parameters and dtype.
    private const string Llama32V5 = """
    {
      "architectures": ["LlamaForCausalLM"], "hidden_size": 2048, "intermediate_size": 8192,
      "max_position_embeddings": 131072, "model_type": "llama", "num_attention_heads": 32,
      "num_hidden_layers": 16, "num_key_value_heads": 8, "head_dim": 64, "rms_norm_eps": 1e-05,
      "rope_parameters": {"rope_theta": 500000.0, "rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
      "tie_word_embeddings": true, "dtype": "bfloat16", "vocab_size": 128256, "transformers_version": "5.0.0"
    }
    """;

    [Fact]
    public void Transformers4LlamaConfigLoads()
    {
        HfModelConfig c = HfModelConfig.Parse(Llama31V4, "llama31/config.json");
        Assert.Equal("llama", c.ModelType);
        Assert.Equal((4096, 14336, 32, 32, 8, 128), (c.HiddenSize, c.IntermediateSize, c.NumHiddenLayers, c.NumAttentionHeads, c.NumKeyValueHeads, c.HeadDim));
        Assert.Equal(128256, c.VocabSize);
        Assert.Equal(1e-5, c.RmsNormEps);
        Assert.Equal(131072, c.MaxPositionEmbeddings);
        Assert.Equal(new RopeParameters(RopeType.Llama3, 500000, 8, 1, 4, 8192), c.Rope);
        Assert.False(c.TieWordEmbeddings);
        Assert.False(c.QkvBias || c.OutputBias || c.MlpBias);
        Assert.Equal(DType.BF16, c.Dtype);
        Assert.Equal(4096, c.QueryDim);
        Assert.Equal(1024, c.KeyValueDim);
    }

    [Fact]
    public void Transformers5LlamaConfigLoads()
    {
        HfModelConfig c = HfModelConfig.Parse(Llama32V5);
        Assert.Equal(new RopeParameters(RopeType.Llama3, 500000, 32, 1, 4, 8192), c.Rope);
        Assert.True(c.TieWordEmbeddings);
        Assert.Equal(DType.BF16, c.Dtype);
        Assert.Equal(64, c.HeadDim);
        Assert.Equal(16, c.NumHiddenLayers);
    }

    [Fact]
    public void MistralAndQwen2DefaultsAndBiases()
    {
        HfModelConfig mistral = HfModelConfig.Parse("""{"model_type":"mistral","hidden_size":4096,"intermediate_size":14336,"num_hidden_layers":32,"num_attention_heads":32,"num_key_value_heads":8,"vocab_size":32000,"rope_theta":1000000.0,"sliding_window":null,"torch_dtype":"float16"}""");
        Assert.Equal(131072, mistral.MaxPositionEmbeddings);
        Assert.Equal(1e-6, mistral.RmsNormEps);
        Assert.Equal(new RopeParameters(RopeType.Default, 1e6), mistral.Rope);
        Assert.Equal(DType.F16, mistral.Dtype);
        Assert.False(mistral.QkvBias);
        Assert.Null(mistral.SlidingWindow);
        Assert.Equal(4096, HfModelConfig.Parse("""{"model_type":"mistral","hidden_size":64,"intermediate_size":128,"num_hidden_layers":2,"num_attention_heads":4,"vocab_size":100,"sliding_window":4096}""").SlidingWindow);

        HfModelConfig qwen = HfModelConfig.Parse("""{"model_type":"qwen2","hidden_size":896,"intermediate_size":4864,"num_hidden_layers":24,"num_attention_heads":14,"num_key_value_heads":2,"vocab_size":151936,"rope_scaling":null,"tie_word_embeddings":true,"rms_norm_eps":1e-06}""");
        Assert.True(qwen.QkvBias);
        Assert.False(qwen.OutputBias);
        Assert.Equal(64, qwen.HeadDim);
        Assert.Equal(32768, qwen.MaxPositionEmbeddings);
        Assert.Null(qwen.Dtype);

        HfModelConfig biased = HfModelConfig.Parse("""{"model_type":"llama","hidden_size":64,"intermediate_size":128,"num_hidden_layers":2,"num_attention_heads":4,"vocab_size":100,"attention_bias":true,"mlp_bias":true,"head_dim":null}""");
        Assert.True(biased.QkvBias && biased.OutputBias && biased.MlpBias);
        Assert.Equal(4, biased.NumKeyValueHeads);
        Assert.Equal(16, biased.HeadDim);
        Assert.Equal(new RopeParameters(RopeType.Default, 10000), biased.Rope);
    }

    [Fact]
    public void LoadReadsTheFileAndKeepsUnknownFields()
    {
        string path = Path.Combine(TestSupport.TempDir(), "config.json");
        File.WriteAllText(path, Llama31V4);
        HfModelConfig c = HfModelConfig.Load(path);
        Assert.Equal(path, c.SourcePath);
        Assert.Equal("4.43.0.dev0", c.Raw["transformers_version"]!.GetValue<string>());
    }

    private const string Tiny = """{"model_type":"llama","hidden_size":64,"intermediate_size":128,"num_hidden_layers":2,"num_attention_heads":4,"vocab_size":100""";

    public static TheoryData<string, string, string> Invalid() => new()
    {
        { "{\"hidden_size\": 64", null!, "not valid JSON" },
        { "[1]", null!, "JSON object" },
        { Tiny.Replace("\"model_type\":\"llama\",", "") + "}", "model_type", "missing" },
        { Tiny.Replace("llama", "gpt2") + "}", "model_type", "'gpt2' cannot be run" },
        { Tiny.Replace("\"hidden_size\":64,", "") + "}", "hidden_size", "missing required field" },
        { Tiny.Replace("\"hidden_size\":64", "\"hidden_size\":\"64\"") + "}", "hidden_size", "positive integer" },
        { Tiny.Replace("\"hidden_size\":64", "\"hidden_size\":-64") + "}", "hidden_size", "positive integer" },
        { Tiny.Replace("\"hidden_size\":64", "\"hidden_size\":64.5") + "}", "hidden_size", "positive integer" },
        { Tiny + ",\"num_key_value_heads\":3}", "num_key_value_heads", "does not divide" },
        { Tiny.Replace("\"num_attention_heads\":4", "\"num_attention_heads\":6") + "}", "num_attention_heads", "does not divide hidden_size" },
        { Tiny + ",\"head_dim\":15}", "head_dim", "even" },
        { Tiny + ",\"rms_norm_eps\":0}", "rms_norm_eps", "positive number" },
        { Tiny + ",\"tie_word_embeddings\":\"yes\"}", "tie_word_embeddings", "true or false" },
        { Tiny + ",\"rope_scaling\":{\"rope_type\":\"yarn\",\"factor\":4.0}}", "rope_scaling.rope_type", "'yarn' cannot be run" },
        { Tiny + ",\"rope_scaling\":{\"type\":\"linear\",\"factor\":2.0}}", "rope_scaling.rope_type", "'linear' cannot be run" },
        { Tiny + ",\"rope_scaling\":{\"rope_type\":\"llama3\",\"factor\":8.0,\"low_freq_factor\":1.0,\"high_freq_factor\":4.0}}", "rope_scaling.original_max_position_embeddings", "missing" },
        { Tiny + ",\"rope_parameters\":{\"rope_type\":\"llama3\",\"rope_theta\":500000,\"factor\":8.0,\"low_freq_factor\":4.0,\"high_freq_factor\":1.0,\"original_max_position_embeddings\":8192}}", "rope_parameters.high_freq_factor", "must exceed" },
        { Tiny + ",\"rope_parameters\":{\"rope_type\":\"dynamic\",\"rope_theta\":10000}}", "rope_parameters.rope_type", "'dynamic' cannot be run" },
        { Tiny + ",\"rope_scaling\":7}", "rope_scaling", "object or null" },
        { Tiny + ",\"torch_dtype\":\"int8\"}", "torch_dtype", "'int8'" },
        { Tiny + ",\"dtype\":\"float8\"}", "dtype", "'float8'" },
        { Tiny.Replace("llama", "qwen2") + ",\"use_sliding_window\":true}", "use_sliding_window", "cannot be run" },
    };

    [Theory]
    [MemberData(nameof(Invalid))]
    public void InvalidConfigsNameTheFieldAndFile(string json, string? field, string message)
    {
        var e = Assert.Throws<HfConfigException>(() => HfModelConfig.Parse(json, "/models/x/config.json"));
        Assert.Equal(field, e.Field);
        Assert.Contains(message, e.Message);
        Assert.StartsWith("/models/x/config.json", e.Message);
    }
}
