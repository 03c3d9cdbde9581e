using QLoRA.Runtime.Engine;

namespace QLoRA.Runtime.Generation;

/// <summary>How well a model predicts given token ids.</summary>
/// <param name="Ids">The ids scored.</param>
/// <param name="Logits">Raw float32 logits [ids, vocab], row t predicting id t + 1 (for parity checks against other tools).</param>
/// <param name="LogProbs">log p(id[t + 1] | id[0..t]) for t = 0 … n − 2, in float64 from the float32 logits.</param>
public sealed record ScoreResult(IReadOnlyList<int> Ids, float[] Logits, double[] LogProbs)
{
    /// <summary>Mean negative log-likelihood per scored token.</summary>
    public double MeanNll => -LogProbs.Average();

    /// <summary>exp(mean NLL).</summary>
    public double Perplexity => Math.Exp(MeanNll);
}

/// <summary>Scores token ids under a model with its attached adapters (attach one with LoraAttachment.AttachSaved, or none).</summary>
public static class Scorer
{
    /// <summary>Logits, per-token log-probabilities and perplexity of <paramref name="ids"/> (at least two).</summary>
    /// <exception cref="ArgumentException">Fewer than two ids, or an id outside the vocabulary (named).</exception>
    public static ScoreResult Score(EngineModel model, IReadOnlyList<int> ids)
    {
        if (ids.Count < 2)
        {
            throw new ArgumentException("Scoring needs at least two tokens (each is scored given the ones before it).", nameof(ids));
        }

        int vocab = model.Config.VocabSize;
        for (int i = 0; i < ids.Count; i++)
        {
            if ((uint)ids[i] >= vocab)
            {
                throw new ArgumentException($"Token {i} has id {ids[i]}, outside the vocabulary of {vocab}.", nameof(ids));
            }
        }

        float[] logits = model.Logits([.. ids]);
        var logProbs = new double[ids.Count - 1];
        for (int t = 0; t + 1 < ids.Count; t++)
        {
            ReadOnlySpan<float> row = logits.AsSpan(t * vocab, vocab);
            double max = double.NegativeInfinity;
            foreach (float z in row)
            {
                max = Math.Max(max, z);
            }

            double sum = 0;
            foreach (float z in row)
            {
                sum += Math.Exp(z - max);
            }

            logProbs[t] = row[ids[t + 1]] - max - Math.Log(sum);
        }

        return new ScoreResult(ids, logits, logProbs);
    }
}
