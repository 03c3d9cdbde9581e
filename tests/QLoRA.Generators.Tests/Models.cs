namespace QLoRA.Generators.Tests;

/// <summary>Representative model definitions used by the tests.</summary>
internal static class Models
{
    public const string TinyLlama = """
        using QLoRA.Modeling;
        using QLoRA.Runtime.Layers;

        namespace Demo;

        [CausalLM(Weights = "tiny")]
        public partial class TinyLlama
        {
            [Embedding("vocab_size", "hidden_size"), HfName("model.embed_tokens")] public partial EmbeddingLayer Embed { get; }
            [Stack("num_hidden_layers"), HfName("model.layers")] public partial LlamaBlock[] Layers { get; }
            [RmsNorm("hidden_size"), HfName("model.norm")] public partial RmsNormLayer Norm { get; }
            [Linear("hidden_size", "vocab_size")] public partial Linear LmHead { get; }
        }

        [Block]
        public partial class LlamaBlock
        {
            [RmsNorm("hidden_size")] public partial RmsNormLayer InputLayernorm { get; }
            [Linear("hidden_size", "hidden_size"), Nf4(BlockSize = 64, DoubleQuant = true), LoRA(Rank = 8, Alpha = 16), HfName("self_attn.q_proj")] public partial QuantizedLinear QProj { get; }
            [Linear("hidden_size", "intermediate_size"), Nf4, LoRA(Rank = 8, Alpha = 16, Dropout = 0.1), HfName("mlp.up_proj")] public partial QuantizedLinear UpProj { get; }
            [Linear("intermediate_size", "hidden_size"), Nf4, HfName("mlp.down_proj")] public partial QuantizedLinear DownProj { get; }
        }
        """;

    /// <summary>A Llama-family model whose properties are named by the user, not after the checkpoint: the engine binds it by HF names.</summary>
    public const string UserLlama = """
        using QLoRA.Modeling;
        using QLoRA.Runtime.Layers;

        namespace Demo;

        [CausalLM]
        public partial class Chatbot
        {
            [Embedding("vocab_size", "hidden_size"), HfName("model.embed_tokens")] public partial EmbeddingLayer Tokens { get; }
            [Stack("num_hidden_layers"), HfName("model.layers")] public partial ChatbotBlock[] Decoder { get; }
            [RmsNorm("hidden_size"), HfName("model.norm")] public partial RmsNormLayer FinalNorm { get; }
            [Linear("hidden_size", "vocab_size"), HfName("lm_head")] public partial Linear Output { get; }
        }

        [Block]
        public partial class ChatbotBlock
        {
            [RmsNorm("hidden_size"), HfName("input_layernorm")] public partial RmsNormLayer PreAttention { get; }
            [Linear("hidden_size", "q_dim"), Nf4, LoRA, HfName("self_attn.q_proj")] public partial QuantizedLinear Query { get; }
            [Linear("hidden_size", "kv_dim"), Nf4, LoRA, HfName("self_attn.k_proj")] public partial QuantizedLinear Key { get; }
            [Linear("hidden_size", "kv_dim"), Nf4, LoRA, HfName("self_attn.v_proj")] public partial QuantizedLinear Value { get; }
            [Linear("q_dim", "hidden_size"), Nf4, LoRA, HfName("self_attn.o_proj")] public partial QuantizedLinear Mixed { get; }
            [RmsNorm("hidden_size"), HfName("post_attention_layernorm")] public partial RmsNormLayer PreMlp { get; }
            [Linear("hidden_size", "intermediate_size"), Nf4, LoRA, HfName("mlp.gate_proj")] public partial QuantizedLinear Gate { get; }
            [Linear("hidden_size", "intermediate_size"), Nf4, LoRA, HfName("mlp.up_proj")] public partial QuantizedLinear Up { get; }
            [Linear("intermediate_size", "hidden_size"), Nf4, LoRA, HfName("mlp.down_proj")] public partial QuantizedLinear Down { get; }
        }
        """;

    public const string ConstantFp4 = """
        using QLoRA.Modeling;
        using QLoRA.Runtime.Layers;

        [CausalLM]
        internal partial class Probe
        {
            [Linear(64, 32), Fp4(BlockSize = 32, DoubleQuant = false), LoRA(Rank = 4, Alpha = 8, UseRsLora = true)] public partial QuantizedLinear Head { get; }
            [RmsNorm(64)] public partial RmsNormLayer FinalNorm { get; }
        }
        """;

    public const string Qwen = """
        using QLoRA.Modeling;
        using QLoRA.Runtime.Layers;

        namespace Models.Qwen;

        [Block]
        public partial class QwenBlock
        {
            [Linear("hidden_size", "hidden_size"), Nf4, LoRA(Rank = 16, Alpha = 32), HfName("self_attn.o_proj")] public partial QuantizedLinear OProj { get; }
        }

        [CausalLM(Weights = "qwen")]
        public partial class Qwen2
        {
            [Stack(2), HfName("model.layers")] public partial QwenBlock[] Blocks { get; }
        }
        """;
}
