namespace QLoRA.Core.HuggingFace;

/// <summary>RoPE frequency schemes the runtime implements.</summary>
public enum RopeType
{
    /// <summary>Plain RoPE: inv_freq[i] = theta^(−2i/d).</summary>
    Default,
    /// <summary>Llama 3.1's wavelength-dependent scaling (factor, low/high frequency factors, original context).</summary>
    Llama3,
}

/// <summary>RoPE parameters from config.json (transformers 4.x <c>rope_theta</c> + <c>rope_scaling</c>, or 5.x <c>rope_parameters</c>).</summary>
/// <param name="Type">Scheme.</param>
/// <param name="Theta">Base frequency (<c>rope_theta</c>).</param>
/// <param name="Factor">Llama 3 scaling factor (1 for default).</param>
/// <param name="LowFreqFactor">Llama 3 low-frequency factor.</param>
/// <param name="HighFreqFactor">Llama 3 high-frequency factor.</param>
/// <param name="OriginalMaxPositionEmbeddings">Llama 3 original context length.</param>
public sealed record RopeParameters(RopeType Type, double Theta, double Factor = 1, double LowFreqFactor = 1, double HighFreqFactor = 4, int OriginalMaxPositionEmbeddings = 8192);
