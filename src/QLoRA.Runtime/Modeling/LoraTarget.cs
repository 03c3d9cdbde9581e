namespace QLoRA.Modeling;

/// <summary>A declared LoRA injection point: module path relative to its class, and the attribute's defaults.</summary>
/// <param name="Module">Checkpoint-relative module name, e.g. <c>self_attn.q_proj</c>.</param>
/// <param name="Rank">Default rank.</param>
/// <param name="Alpha">Default lora_alpha.</param>
/// <param name="Dropout">Default dropout.</param>
/// <param name="UseRsLora">Default rsLoRA flag.</param>
public sealed record LoraTarget(string Module, int Rank, double Alpha, double Dropout, bool UseRsLora);
