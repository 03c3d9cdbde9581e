using ILGPU;

namespace QLoRA.Runtime.Kernels;

/// <summary>
/// One AdamW step (decoupled weight decay, as torch.optim.AdamW), elementwise and grid-stride, float32 state:
/// p ← p − lr·wd·p; m ← β1·m + (1−β1)·g; v ← β2·v + (1−β2)·g²; p ← p − lr·(m/(1−β1ᵗ)) / (sqrt(v/(1−β2ᵗ)) + ε).
/// </summary>
internal static class AdamWKernels
{
    public static void Step(ArrayView<float> parameters, ArrayView<float> gradients, ArrayView<float> m, ArrayView<float> v, long count, AdamWHyper h)
    {
        for (long i = Grid.GlobalIndex.X; i < count; i += (long)Grid.DimX * Group.DimX)
        {
            float g = gradients[i] * h.GradientScale;
            float p = parameters[i] * h.Decay;
            float mi = (h.Beta1 * m[i]) + (h.OneMinusBeta1 * g);
            float vi = (h.Beta2 * v[i]) + (h.OneMinusBeta2 * g * g);
            m[i] = mi;
            v[i] = vi;
            float mHat = mi / h.BiasCorrection1;
            float denominator = (MathF.Sqrt(vi) / h.BiasCorrection2Sqrt) + h.Epsilon;
            parameters[i] = p - (h.LearningRate * mHat / denominator);
        }
    }
}

/// <summary>
/// Scalars of one AdamW step, precomputed on the host in double and rounded once (1 − β₂ rounded from double is exact to
/// float32's precision; 1f − 0.999f would be 1.3e-5 off): as torch, whose Python scalars are doubles.
/// </summary>
internal readonly record struct AdamWHyper(float LearningRate, float Beta1, float Beta2, float OneMinusBeta1, float OneMinusBeta2, float Epsilon, float Decay, float BiasCorrection1, float BiasCorrection2Sqrt, float GradientScale);
