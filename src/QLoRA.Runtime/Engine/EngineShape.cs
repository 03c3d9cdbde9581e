using QLoRA.Core;
using QLoRA.Core.HuggingFace;

namespace QLoRA.Runtime.Engine;

/// <summary>The dimensions a model run is planned for: the model's widths and the token budget of one micro-batch.</summary>
/// <param name="Tokens">Most tokens in one packed micro-batch (all its sequences together).</param>
/// <param name="Hidden">hidden_size.</param>
/// <param name="Intermediate">intermediate_size.</param>
/// <param name="Heads">num_attention_heads.</param>
/// <param name="KeyValueHeads">num_key_value_heads.</param>
/// <param name="HeadDim">head_dim.</param>
/// <param name="Vocab">vocab_size.</param>
/// <param name="Layers">num_hidden_layers.</param>
/// <param name="ComputeDtype">Dtype of activations (F32, BF16 or F16).</param>
public sealed record EngineShape(int Tokens, int Hidden, int Intermediate, int Heads, int KeyValueHeads, int HeadDim, int Vocab, int Layers, DType ComputeDtype)
{
    /// <summary>Width of the queries: heads × head_dim.</summary>
    public int QueryDim => Heads * HeadDim;

    /// <summary>Width of the keys and values: kv heads × head_dim.</summary>
    public int KeyValueDim => KeyValueHeads * HeadDim;

    /// <summary>The shape of <paramref name="config"/>'s model for <paramref name="tokens"/> tokens per micro-batch.</summary>
    public static EngineShape Of(HfModelConfig config, int tokens, DType computeDtype) => new(
        tokens, config.HiddenSize, config.IntermediateSize, config.NumAttentionHeads, config.NumKeyValueHeads, config.HeadDim,
        config.VocabSize, config.NumHiddenLayers, computeDtype);
}
