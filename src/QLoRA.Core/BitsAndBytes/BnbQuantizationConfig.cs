using System.Text.Json.Nodes;
using QLoRA.Core.Quantization;

namespace QLoRA.Core.BitsAndBytes;

/// <summary>The <c>quantization_config</c> transformers writes into config.json for a bitsandbytes 4-bit model.</summary>
public static class BnbQuantizationConfig
{
    /// <summary>The object for <paramref name="options"/>, with <paramref name="skipModules"/> kept dense (llm_int8_skip_modules).</summary>
    public static JsonObject Create(QuantizationOptions options, IEnumerable<string> skipModules) => new()
    {
        ["_load_in_4bit"] = true,
        ["_load_in_8bit"] = false,
        ["bnb_4bit_compute_dtype"] = "bfloat16",
        ["bnb_4bit_quant_storage"] = "uint8",
        ["bnb_4bit_quant_type"] = options.Type.ToBnbName(),
        ["bnb_4bit_use_double_quant"] = options.DoubleQuant,
        ["llm_int8_enable_fp32_cpu_offload"] = false,
        ["llm_int8_has_fp16_weight"] = false,
        ["llm_int8_skip_modules"] = new JsonArray([.. skipModules.Select(k => (JsonNode?)k)]),
        ["llm_int8_threshold"] = 6.0,
        ["load_in_4bit"] = true,
        ["load_in_8bit"] = false,
        ["quant_method"] = "bitsandbytes",
    };
}
