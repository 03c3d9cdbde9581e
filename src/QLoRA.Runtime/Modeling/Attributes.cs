namespace QLoRA.Modeling;

/// <summary>
/// Marks a partial class as a causal language model: the source generator implements its layer properties, a static
/// <c>Load(Device, string path)</c>, layer enumeration and LoRA target lists.
/// </summary>
[AttributeUsage(AttributeTargets.Class, Inherited = false)]
public sealed class CausalLMAttribute : Attribute
{
    /// <summary>The OutputName of the QLoRAWeights item whose manifest the build checks this model against.</summary>
    public string? Weights { get; set; }
}

/// <summary>Marks a partial class as a repeated block (e.g. a decoder layer) used through <see cref="StackAttribute"/>.</summary>
[AttributeUsage(AttributeTargets.Class, Inherited = false)]
public sealed class BlockAttribute : Attribute;

/// <summary>An array property of <c>count</c> blocks, checkpoint names <c>&lt;prefix&gt;.{i}.</c>.</summary>
/// <param name="count">An integer, or the name of a config.json field (e.g. <c>"num_hidden_layers"</c>).</param>
[AttributeUsage(AttributeTargets.Property, Inherited = false)]
public sealed class StackAttribute(object count) : Attribute
{
    /// <summary>Number of blocks (int) or config field (string).</summary>
    public object Count { get; } = count;
}

/// <summary>A linear layer W [out, in]: dense (<c>Linear</c>) or, with <see cref="Nf4Attribute"/>/<see cref="Fp4Attribute"/>, 4-bit (<c>QuantizedLinear</c>).</summary>
/// <param name="inFeatures">An integer or a config.json field name.</param>
/// <param name="outFeatures">An integer or a config.json field name.</param>
[AttributeUsage(AttributeTargets.Property, Inherited = false)]
public sealed class LinearAttribute(object inFeatures, object outFeatures) : Attribute
{
    /// <summary>Input features.</summary>
    public object InFeatures { get; } = inFeatures;

    /// <summary>Output features.</summary>
    public object OutFeatures { get; } = outFeatures;

    /// <summary>
    /// Checkpoint name (relative to the model root, without <c>.weight</c>) of the tensor to use when this one is absent —
    /// e.g. <c>"model.embed_tokens"</c> for an lm_head tied to the embeddings (tie_word_embeddings).
    /// </summary>
    public string? TiedTo { get; set; }
}

/// <summary>A token embedding [vocab, dim].</summary>
[AttributeUsage(AttributeTargets.Property, Inherited = false)]
public sealed class EmbeddingAttribute(object vocab, object dim) : Attribute
{
    /// <summary>Vocabulary size.</summary>
    public object Vocab { get; } = vocab;

    /// <summary>Width.</summary>
    public object Dim { get; } = dim;
}

/// <summary>An RMSNorm of width <c>dim</c> (eps from config.json's rms_norm_eps).</summary>
[AttributeUsage(AttributeTargets.Property, Inherited = false)]
public sealed class RmsNormAttribute(object dim) : Attribute
{
    /// <summary>Width.</summary>
    public object Dim { get; } = dim;
}

/// <summary>The linear weight is stored NF4 (an assertion checked against the weights manifest).</summary>
[AttributeUsage(AttributeTargets.Property, Inherited = false)]
public sealed class Nf4Attribute : Attribute
{
    /// <summary>Values per absmax block: a power of two in 32..4096.</summary>
    public int BlockSize { get; set; } = 64;

    /// <summary>Absmax double-quantized.</summary>
    public bool DoubleQuant { get; set; } = true;
}

/// <summary>The linear weight is stored FP4.</summary>
[AttributeUsage(AttributeTargets.Property, Inherited = false)]
public sealed class Fp4Attribute : Attribute
{
    /// <summary>Values per absmax block: a power of two in 32..4096.</summary>
    public int BlockSize { get; set; } = 64;

    /// <summary>Absmax double-quantized.</summary>
    public bool DoubleQuant { get; set; } = true;
}

/// <summary>A LoRA injection point with its default hyperparameters (the run's LoRA configuration wins).</summary>
[AttributeUsage(AttributeTargets.Property, Inherited = false)]
public sealed class LoRAAttribute : Attribute
{
    /// <summary>Rank r.</summary>
    public int Rank { get; set; } = 64;

    /// <summary>lora_alpha.</summary>
    public double Alpha { get; set; } = 16;

    /// <summary>Dropout on the adapter input.</summary>
    public double Dropout { get; set; } = 0.05;

    /// <summary>Scale by alpha / √r.</summary>
    public bool UseRsLora { get; set; }
}

/// <summary>The checkpoint name of a layer or stack relative to its parent (default: the property name in snake_case).</summary>
[AttributeUsage(AttributeTargets.Property, Inherited = false)]
public sealed class HfNameAttribute(string name) : Attribute
{
    /// <summary>E.g. <c>self_attn.q_proj</c>.</summary>
    public string Name { get; } = name;
}

/// <summary>How a generated model's <c>Load</c> builds its layers.</summary>
/// <param name="KeepProjectionsDense">
/// Keep the 4-bit-declared projections dense in the compute dtype (a bitsandbytes checkpoint is dequantized once):
/// plain LoRA on a bf16/f16 base, bf16 inference, and parity checks against unquantized references.
/// </param>
/// <param name="QuantizeDenseAs">
/// How dense projections are quantized on load instead of the model's declared storage (e.g. FP4 for a model declared
/// NF4); checkpoints already stored 4-bit load as stored.
/// </param>
public sealed record LoadOptions(bool KeepProjectionsDense = false, QLoRA.Core.Quantization.QuantizationOptions? QuantizeDenseAs = null);
