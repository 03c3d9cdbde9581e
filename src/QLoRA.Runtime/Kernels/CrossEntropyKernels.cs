using ILGPU;

namespace QLoRA.Runtime.Kernels;

/// <summary>
/// Softmax cross-entropy on a chunk of logit rows, in place: each row's loss (log-sum-exp − logit[label]) is written
/// and the row is replaced by its gradient (softmax − one-hot) × gradScale. Rows whose label is the ignore index get
/// loss 0 and a zero gradient. A warp owns a row (lanes stride over the vocabulary, coalesced) and reduces its max and
/// sum with butterflies: bit-reproducible.
/// </summary>
internal static class CrossEntropyKernels
{
    public static void LossAndGradient(ArrayView<float> logits, ArrayView<int> labels, ArrayView<float> losses, int rows, int vocab, int ignoreIndex, float gradScale)
    {
        int lanes = Warp.WarpSize, lane = Warp.LaneIdx;
        for (int r = WarpRows.First, stride = WarpRows.Stride; r < rows; r += stride)
        {
            long row = (long)r * vocab;
            int label = labels[r];
            if (label == ignoreIndex)
            {
                if (lane == 0)
                {
                    losses[r] = 0f;
                }

                for (int j = lane; j < vocab; j += lanes)
                {
                    logits[row + j] = 0f;
                }

                continue;
            }

            float max = float.NegativeInfinity;
            for (int j = lane; j < vocab; j += lanes)
            {
                max = logits[row + j] > max ? logits[row + j] : max;
            }

            max = WarpReduce.Max(max);
            // Read before the sum's shuffles: after them, lanes overwrite the row with its gradient.
            float labelLogit = logits[row + label];
            float sum = 0f;
            for (int j = lane; j < vocab; j += lanes)
            {
                sum += MathF.Exp(logits[row + j] - max);
            }

            float logSumExp = max + MathF.Log(WarpReduce.Sum(sum));
            if (lane == 0)
            {
                losses[r] = logSumExp - labelLogit;
            }

            for (int j = lane; j < vocab; j += lanes)
            {
                float p = MathF.Exp(logits[row + j] - logSumExp);
                logits[row + j] = (p - (j == label ? 1f : 0f)) * gradScale;
            }
        }
    }
}
