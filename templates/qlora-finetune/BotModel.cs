using QLoRA.Modeling;
using QLoRA.Runtime.Layers;

namespace QLoRABot;

/// <summary>
/// A Llama-family causal language model. Dimensions are config.json field names, resolved when the model loads:
/// <c>using var model = BotModel.Load(Device.Best(), "model");</c>. <c>Weights = "model"</c>
/// checks this definition against the weights the build quantizes (the QLoRAWeights item in the project file).
/// </summary>
[CausalLM(Weights = "model")]
public partial class BotModel
{
    [Embedding("vocab_size", "hidden_size"), HfName("model.embed_tokens")]
    public partial EmbeddingLayer Embed { get; }

    [Stack("num_hidden_layers"), HfName("model.layers")]
    public partial DecoderLayer[] Layers { get; }

    [RmsNorm("hidden_size"), HfName("model.norm")]
    public partial RmsNormLayer Norm { get; }

    [Linear("hidden_size", "vocab_size")]
    public partial Linear LmHead { get; }
}

/// <summary>One decoder layer: attention and MLP projections stored 4-bit with LoRA points, and two RMSNorms.</summary>
[Block]
public partial class DecoderLayer
{
    [RmsNorm("hidden_size")]
    public partial RmsNormLayer InputLayernorm { get; }

    [Linear("hidden_size", "q_dim"), Nf4 /*QUANT_TYPE*/(BlockSize = 64 /*BLOCK_SIZE*/), LoRA(Rank = 16 /*LORA_RANK*/, Alpha = 32 /*LORA_ALPHA*/), HfName("self_attn.q_proj")]
    public partial QuantizedLinear QProj { get; }

    [Linear("hidden_size", "kv_dim"), Nf4 /*QUANT_TYPE*/(BlockSize = 64 /*BLOCK_SIZE*/), LoRA(Rank = 16 /*LORA_RANK*/, Alpha = 32 /*LORA_ALPHA*/), HfName("self_attn.k_proj")]
    public partial QuantizedLinear KProj { get; }

    [Linear("hidden_size", "kv_dim"), Nf4 /*QUANT_TYPE*/(BlockSize = 64 /*BLOCK_SIZE*/), LoRA(Rank = 16 /*LORA_RANK*/, Alpha = 32 /*LORA_ALPHA*/), HfName("self_attn.v_proj")]
    public partial QuantizedLinear VProj { get; }

    [Linear("q_dim", "hidden_size"), Nf4 /*QUANT_TYPE*/(BlockSize = 64 /*BLOCK_SIZE*/), LoRA(Rank = 16 /*LORA_RANK*/, Alpha = 32 /*LORA_ALPHA*/), HfName("self_attn.o_proj")]
    public partial QuantizedLinear OProj { get; }

    [RmsNorm("hidden_size")]
    public partial RmsNormLayer PostAttentionLayernorm { get; }

    [Linear("hidden_size", "intermediate_size"), Nf4 /*QUANT_TYPE*/(BlockSize = 64 /*BLOCK_SIZE*/), LoRA(Rank = 16 /*LORA_RANK*/, Alpha = 32 /*LORA_ALPHA*/), HfName("mlp.gate_proj")]
    public partial QuantizedLinear GateProj { get; }

    [Linear("hidden_size", "intermediate_size"), Nf4 /*QUANT_TYPE*/(BlockSize = 64 /*BLOCK_SIZE*/), LoRA(Rank = 16 /*LORA_RANK*/, Alpha = 32 /*LORA_ALPHA*/), HfName("mlp.up_proj")]
    public partial QuantizedLinear UpProj { get; }

    [Linear("intermediate_size", "hidden_size"), Nf4 /*QUANT_TYPE*/(BlockSize = 64 /*BLOCK_SIZE*/), LoRA(Rank = 16 /*LORA_RANK*/, Alpha = 32 /*LORA_ALPHA*/), HfName("mlp.down_proj")]
    public partial QuantizedLinear DownProj { get; }
}
