using QLoRA.Runtime.Layers;

namespace QLoRA.Runtime.Engine;

/// <summary>
/// The weights of one Llama-family decoder block as the engine runs it (pre-norm attention with GQA and RoPE, then a
/// SwiGLU MLP), whatever a model names its properties: the built-in <c>LlamaForCausalLM</c> and typed models
/// bound to the engine both hand their blocks over in this form.
/// </summary>
/// <param name="InputNorm">RMSNorm before attention.</param>
/// <param name="Q">q_proj [heads·headDim, hidden].</param>
/// <param name="K">k_proj [kvHeads·headDim, hidden].</param>
/// <param name="V">v_proj [kvHeads·headDim, hidden].</param>
/// <param name="O">o_proj [hidden, heads·headDim].</param>
/// <param name="PostNorm">RMSNorm before the MLP.</param>
/// <param name="Gate">gate_proj [intermediate, hidden].</param>
/// <param name="Up">up_proj [intermediate, hidden].</param>
/// <param name="Down">down_proj [hidden, intermediate].</param>
public sealed record DecoderBlockWeights(
    RmsNormLayer InputNorm, QuantizedLinear Q, QuantizedLinear K, QuantizedLinear V, QuantizedLinear O,
    RmsNormLayer PostNorm, QuantizedLinear Gate, QuantizedLinear Up, QuantizedLinear Down)
{
    /// <summary>The seven projections in PEFT's module order within a block.</summary>
    public IEnumerable<QuantizedLinear> Projections => [Q, K, V, O, Gate, Up, Down];
}
