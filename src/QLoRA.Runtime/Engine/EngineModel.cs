using QLoRA.Core.HuggingFace;
using QLoRA.Runtime.Layers;
using QLoRA.Runtime.Models;
using QLoRA.Runtime.Tensors;
using Device = QLoRA.Runtime.Devices.Device;

namespace QLoRA.Runtime.Engine;

/// <summary>
/// A causal LM as the engine runs it: embeddings, decoder blocks of the Llama family, the final norm and lm_head —
/// the built-in <see cref="LlamaForCausalLM"/> and typed models bound to the engine both reduce to this.
/// </summary>
/// <param name="Config">The checkpoint's config (widths, RoPE, norms' epsilon, sliding window).</param>
/// <param name="Embed">Token embeddings [vocab, hidden] in the compute dtype.</param>
/// <param name="Blocks">Decoder blocks, bottom to top.</param>
/// <param name="Norm">Final RMSNorm.</param>
/// <param name="LmHead">lm_head [vocab, hidden] in the compute dtype (the embeddings when tied).</param>
public sealed record EngineModel(HfModelConfig Config, EmbeddingLayer Embed, IReadOnlyList<DecoderBlockWeights> Blocks, RmsNormLayer Norm, DeviceTensor LmHead)
{
    /// <summary>The built-in Llama's parts (its generated <c>ToEngineModel</c>).</summary>
    public static EngineModel Of(LlamaForCausalLM model) => model.ToEngineModel();

    /// <summary>
    /// Logits [tokens, vocab] of one sequence (positions 0…n−1) with the adapters as attached (no dropout), computed in
    /// the compute dtype with float32 sums, as float32 on the host. Buffers are allocated for the call.
    /// </summary>
    /// <exception cref="ArgumentException">No tokens, or an id outside the vocabulary.</exception>
    public float[] Logits(ReadOnlySpan<int> ids)
    {
        if (ids.Length == 0)
        {
            throw new ArgumentException("At least one token is needed.", nameof(ids));
        }

        Device device = Embed.Table.Device;
        using var engine = new InferenceArena(device, this, ids.Length);
        return engine.Logits(ids);
    }

    /// <summary>
    /// The modules PEFT's modules_to_save can train whole, with their module names and tensors: model.embed_tokens,
    /// each block's input_layernorm and post_attention_layernorm, model.norm, lm_head (omitted when tied to the embeddings).
    /// </summary>
    public IEnumerable<(string Name, DeviceTensor Tensor)> WholeModules()
    {
        yield return ("model.embed_tokens", Embed.Table);
        for (int l = 0; l < Blocks.Count; l++)
        {
            yield return ($"model.layers.{l}.input_layernorm", Blocks[l].InputNorm.Weight);
            yield return ($"model.layers.{l}.post_attention_layernorm", Blocks[l].PostNorm.Weight);
        }

        yield return ("model.norm", Norm.Weight);
        if (!TiedLmHead)
        {
            yield return ("lm_head", LmHead);
        }
    }

    /// <summary>
    /// True when config.json ties lm_head to the embeddings (tie_word_embeddings), as transformers ties them: one matrix,
    /// whatever copies the engine holds.
    /// </summary>
    public bool TiedLmHead => Config.TieWordEmbeddings || LmHead.NativePointer == Embed.Table.NativePointer;

    /// <summary>Every projection with its PEFT module name (model.layers.{i}.self_attn.q_proj, …), bottom to top.</summary>
    public IEnumerable<(string Name, QuantizedLinear Layer)> Projections()
    {
        string[] names = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"];
        for (int l = 0; l < Blocks.Count; l++)
        {
            int j = 0;
            foreach (QuantizedLinear projection in Blocks[l].Projections)
            {
                yield return ($"model.layers.{l}.{names[j++]}", projection);
            }
        }
    }
}
