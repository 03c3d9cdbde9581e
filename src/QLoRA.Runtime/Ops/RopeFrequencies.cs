using QLoRA.Core.HuggingFace;

namespace QLoRA.Runtime.Ops;

/// <summary>Rotary inverse frequencies as transformers computes them (default and llama3 scaling), in float32.</summary>
public static class RopeFrequencies
{
    /// <summary>inv_freq[i] for i in [0, headDim/2).</summary>
    /// <exception cref="ArgumentException">headDim is not even and positive.</exception>
    public static float[] Compute(RopeParameters rope, int headDim)
    {
        if (headDim <= 0 || headDim % 2 != 0)
        {
            throw new ArgumentException($"head_dim {headDim} must be even and positive.", nameof(headDim));
        }

        var inv = new float[headDim / 2];
        for (int i = 0; i < inv.Length; i++)
        {
            // transformers: 1 / base ** (arange(0, dim, 2).float() / dim), in float32.
            float exponent = (float)(2 * i) / headDim;
            inv[i] = 1f / MathF.Pow((float)rope.Theta, exponent);
        }

        if (rope.Type == RopeType.Llama3)
        {
            double lowWavelength = rope.OriginalMaxPositionEmbeddings / rope.LowFreqFactor;
            double highWavelength = rope.OriginalMaxPositionEmbeddings / rope.HighFreqFactor;
            for (int i = 0; i < inv.Length; i++)
            {
                double wavelength = 2 * Math.PI / inv[i];
                double scaled = wavelength > lowWavelength ? inv[i] / rope.Factor : inv[i];
                if (!(wavelength < highWavelength) && !(wavelength > lowWavelength))
                {
                    double smooth = ((rope.OriginalMaxPositionEmbeddings / wavelength) - rope.LowFreqFactor) / (rope.HighFreqFactor - rope.LowFreqFactor);
                    scaled = ((1 - smooth) * scaled / rope.Factor) + (smooth * scaled);
                }

                inv[i] = (float)scaled;
            }
        }

        return inv;
    }
}
