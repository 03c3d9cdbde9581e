using System.Text.RegularExpressions;

namespace QLoRA.Core.HuggingFace;

/// <summary>The shapes a Llama-family checkpoint's tensors must have under a given config (HF names).</summary>
public static partial class LlamaTensorShapes
{
    [GeneratedRegex(@"^model\.layers\.(\d+)\.(.+)$", RegexOptions.CultureInvariant)]
    private static partial Regex LayerName();

    /// <summary>
    /// The expected shape of <paramref name="name"/>, or null for a name outside the Llama family's layout.
    /// Layer names must have an index below <c>num_hidden_layers</c>; otherwise <paramref name="problem"/> says why.
    /// </summary>
    public static long[]? Expected(HfModelConfig c, string name, out string? problem)
    {
        problem = null;
        long h = c.HiddenSize, q = c.QueryDim, kv = c.KeyValueDim, i = c.IntermediateSize, v = c.VocabSize;
        switch (name)
        {
            case "model.embed_tokens.weight":
            case "lm_head.weight":
                return [v, h];
            case "model.norm.weight":
                return [h];
        }

        Match m = LayerName().Match(name);
        if (!m.Success)
        {
            return null;
        }

        if (!int.TryParse(m.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture, out int layer) || layer >= c.NumHiddenLayers)
        {
            problem = $"layer {m.Groups[1].Value} is beyond num_hidden_layers {c.NumHiddenLayers}";
            return null;
        }

        return m.Groups[2].Value switch
        {
            "self_attn.q_proj.weight" => [q, h],
            "self_attn.k_proj.weight" or "self_attn.v_proj.weight" => [kv, h],
            "self_attn.o_proj.weight" => [h, q],
            "self_attn.q_proj.bias" => [q],
            "self_attn.k_proj.bias" or "self_attn.v_proj.bias" => [kv],
            "self_attn.o_proj.bias" or "mlp.down_proj.bias" => [h],
            "mlp.gate_proj.weight" or "mlp.up_proj.weight" => [i, h],
            "mlp.down_proj.weight" => [h, i],
            "mlp.gate_proj.bias" or "mlp.up_proj.bias" => [i],
            "input_layernorm.weight" or "post_attention_layernorm.weight" => [h],
            _ => null,
        };
    }
}
