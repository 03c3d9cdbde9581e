namespace QLoRA.Core.Quantization;

/// <summary>How to quantize a tensor. Defaults are QLoRA's: NF4, blocks of 64, double quantization on.</summary>
/// <param name="Type">NF4 or FP4.</param>
/// <param name="BlockSize">Values per absmax block: a power of two in 32..4096.</param>
/// <param name="DoubleQuant">Quantize the absmax constants to 8 bits (nested blocks of 256).</param>
public sealed record QuantizationOptions(QuantType Type = QuantType.Nf4, int BlockSize = 64, bool DoubleQuant = true)
{
    /// <summary>QLoRA's defaults.</summary>
    public static QuantizationOptions Default { get; } = new();
}
