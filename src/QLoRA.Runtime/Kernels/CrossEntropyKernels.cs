using ILGPU;

namespace QLoRA.Runtime.Kernels;

/// <summary>
/// Softmax cross-entropy on a chunk of logit rows, in place: each row's loss (log-sum-exp − logit[label]) is written
/// and the row is replaced by its gradient (softmax − one-hot) × gradScale. Rows whose label is the ignore index get
/// loss 0 and a zero gradient.
/// </summary>
internal static class CrossEntropyKernels
{
    public static void LossAndGradient(ArrayView<float> logits, ArrayView<int> labels, ArrayView<float> losses, int rows, int vocab, int ignoreIndex, float gradScale)
    {
        for (int r = Grid.GlobalIndex.X; r < rows; r += Grid.DimX * Group.DimX)
        {
            long row = (long)r * vocab;
            int label = labels[r];
            if (label == ignoreIndex)
            {
                losses[r] = 0f;
                for (int j = 0; j < vocab; j++)
                {
                    logits[row + j] = 0f;
                }

                continue;
            }

            float max = float.NegativeInfinity;
            for (int j = 0; j < vocab; j++)
            {
                max = logits[row + j] > max ? logits[row + j] : max;
            }

            float sum = 0f;
            for (int j = 0; j < vocab; j++)
            {
                sum += MathF.Exp(logits[row + j] - max);
            }

            float logSumExp = max + MathF.Log(sum);
            losses[r] = logSumExp - logits[row + label];
            for (int j = 0; j < vocab; j++)
            {
                float p = MathF.Exp(logits[row + j] - logSumExp);
                logits[row + j] = (p - (j == label ? 1f : 0f)) * gradScale;
            }
        }
    }
}
