using ILGPU;

namespace QLoRA.Runtime.Kernels;

/// <summary>
/// AdamW with 8-bit blockwise state, bitsandbytes' semantics (<c>kOptimizerStatic8bit2StateBlockwise</c>, ADAM): per
/// block of 256 elements the moments are code[c]·absmax (signed dynamic map for m, unsigned for v), updated in float32,
/// p += −lr·√(1−β₂ᵗ)/(1−β₁ᵗ) · m / (√v + √(1−β₂ᵗ)·ε), then p *= 1 − lr·wd; the new moments are stored as the nearest
/// code of x / max|x| over the block (m keeping its sign). One thread per block, grid-stride over blocks: the first
/// pass updates p and finds the new absmax, the second recomputes the moments from the old codes and re-codes them.
/// </summary>
internal static class EightBitAdamWKernels
{
    /// <summary>Elements per quantization block of the state.</summary>
    public const int BlockSize = 256;

    public static void Step(ArrayView<float> parameters, ArrayView<float> gradients, ArrayView<byte> codes1, ArrayView<byte> codes2,
        ArrayView<float> absmax1, ArrayView<float> absmax2, ArrayView<float> map1, ArrayView<float> map2, long count, EightBitAdamWHyper h)
    {
        long blocks = (count + BlockSize - 1) / BlockSize;
        for (long block = Grid.GlobalIndex.X; block < blocks; block += (long)Grid.DimX * Group.DimX)
        {
            long start = block * BlockSize, end = Math.Min(count, start + BlockSize);
            float old1 = absmax1[block], old2 = absmax2[block];
            float max1 = 0f, max2 = 0f;
            for (long i = start; i < end; i++)
            {
                float g = gradients[i] * h.GradientScale;
                float s1 = (map1[(int)codes1[i]] * old1 * h.Beta1) + ((1f - h.Beta1) * g);
                float s2 = (map2[(int)codes2[i]] * old2 * h.Beta2) + ((1f - h.Beta2) * g * g);
                max1 = Math.Max(max1, Math.Abs(s1));
                max2 = Math.Max(max2, Math.Abs(s2));
                float p = parameters[i] + (h.StepSize * (s1 / (MathF.Sqrt(s2) + (h.Correction2 * h.Epsilon))));
                parameters[i] = h.WeightDecay > 0f ? p * (1f - (h.LearningRate * h.WeightDecay)) : p;
            }

            for (long i = start; i < end; i++)
            {
                // The same arithmetic as above, from the codes not yet overwritten.
                float g = gradients[i] * h.GradientScale;
                float s1 = (map1[(int)codes1[i]] * old1 * h.Beta1) + ((1f - h.Beta1) * g);
                float s2 = (map2[(int)codes2[i]] * old2 * h.Beta2) + ((1f - h.Beta2) * g * g);
                int c1 = Nearest(map1, max1 > 0f ? s1 / max1 : 0f);
                // bitsandbytes keeps m's sign: a code of the other sign moves one step toward x.
                if (((Interop.FloatAsInt(map1[c1]) ^ Interop.FloatAsInt(s1)) & 0x8000_0000u) != 0)
                {
                    c1 += s1 > 0f ? 1 : -1;
                }

                codes1[i] = (byte)c1;
                codes2[i] = (byte)Nearest(map2, max2 > 0f ? s2 / max2 : 0f);
            }

            absmax1[block] = max1;
            absmax2[block] = max2;
        }
    }

    /// <summary>
    /// The nearest entry of an ascending 256-entry map: the number of float32 midpoints (map[j] + map[j+1])·0.5 below x,
    /// plus one when x equals a midpoint of odd index (QLoRA.Core's DynamicMap.Quantize rule, bitsandbytes' ties).
    /// </summary>
    public static int Nearest(ArrayView<float> map, float x)
    {
        int below = 0; // midpoints j < below are < x
        for (int step = 128; step > 0; step >>= 1)
        {
            int j = below + step - 1;
            if (j < 255 && (map[j] + map[j + 1]) * 0.5f < x)
            {
                below += step;
            }
        }

        if (below < 255 && (below & 1) == 1 && (map[below] + map[below + 1]) * 0.5f == x)
        {
            below++;
        }

        return below;
    }
}

/// <summary>Scalars of one 8-bit AdamW step (bias corrections precomputed on the host).</summary>
internal readonly record struct EightBitAdamWHyper(float LearningRate, float Beta1, float Beta2, float Epsilon, float WeightDecay, float StepSize, float Correction2, float GradientScale);
