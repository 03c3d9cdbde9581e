using QLoRA.Modeling;
using QLoRA.Runtime.Layers;

namespace QLoRA.Runtime.Models;

/// <summary>
/// The Llama family (Llama 2/3, Mistral, TinyLlama) defined with the modeling attributes the source generator reads —
/// the runtime dogfoods its own generator. Dimensions are config.json fields; linear weights are 4-bit with LoRA points
/// at every projection (QLoRA's defaults: r 64, alpha 16, dropout 0.05).
/// </summary>
[CausalLM]
public partial class LlamaForCausalLM
{
    /// <summary>Token embeddings.</summary>
    [Embedding("vocab_size", "hidden_size"), HfName("model.embed_tokens")]
    public partial EmbeddingLayer Embed { get; }

    /// <summary>Decoder layers.</summary>
    [Stack("num_hidden_layers"), HfName("model.layers")]
    public partial LlamaDecoderLayer[] Layers { get; }

    /// <summary>Final norm.</summary>
    [RmsNorm("hidden_size"), HfName("model.norm")]
    public partial RmsNormLayer Norm { get; }

    /// <summary>Output projection (kept dense, as QLoRA keeps it); the embeddings when tie_word_embeddings leaves it out.</summary>
    [Linear("hidden_size", "vocab_size", TiedTo = "model.embed_tokens")]
    public partial Linear LmHead { get; }
}

/// <summary>One Llama decoder layer.</summary>
[Block]
public partial class LlamaDecoderLayer
{
    /// <summary>Norm before attention.</summary>
    [RmsNorm("hidden_size")]
    public partial RmsNormLayer InputLayernorm { get; }

    /// <summary>Query projection.</summary>
    [Linear("hidden_size", "q_dim"), Nf4, LoRA, HfName("self_attn.q_proj")]
    public partial QuantizedLinear QProj { get; }

    /// <summary>Key projection.</summary>
    [Linear("hidden_size", "kv_dim"), Nf4, LoRA, HfName("self_attn.k_proj")]
    public partial QuantizedLinear KProj { get; }

    /// <summary>Value projection.</summary>
    [Linear("hidden_size", "kv_dim"), Nf4, LoRA, HfName("self_attn.v_proj")]
    public partial QuantizedLinear VProj { get; }

    /// <summary>Attention output projection.</summary>
    [Linear("q_dim", "hidden_size"), Nf4, LoRA, HfName("self_attn.o_proj")]
    public partial QuantizedLinear OProj { get; }

    /// <summary>Norm before the MLP.</summary>
    [RmsNorm("hidden_size")]
    public partial RmsNormLayer PostAttentionLayernorm { get; }

    /// <summary>MLP gate projection.</summary>
    [Linear("hidden_size", "intermediate_size"), Nf4, LoRA, HfName("mlp.gate_proj")]
    public partial QuantizedLinear GateProj { get; }

    /// <summary>MLP up projection.</summary>
    [Linear("hidden_size", "intermediate_size"), Nf4, LoRA, HfName("mlp.up_proj")]
    public partial QuantizedLinear UpProj { get; }

    /// <summary>MLP down projection.</summary>
    [Linear("intermediate_size", "hidden_size"), Nf4, LoRA, HfName("mlp.down_proj")]
    public partial QuantizedLinear DownProj { get; }
}
