namespace QLoRA.Runtime.Generation;

/// <summary>
/// How the next token is chosen, with Hugging Face's meanings and order (penalties, logit bias, temperature, top-k,
/// top-p, min-p). The defaults sample from the model's distribution unchanged; <see cref="Greedy"/> takes the argmax.
/// </summary>
public sealed record SamplingOptions
{
    /// <summary>Greedy decoding (temperature 0).</summary>
    public static SamplingOptions Greedy { get; } = new() { Temperature = 0 };

    /// <summary>Logits are divided by this; 0 means greedy (argmax, the lowest id on ties).</summary>
    public double Temperature { get; init; } = 1.0;

    /// <summary>Keep only the logits ≥ the k-th largest (ties kept); 0 turns it off.</summary>
    public int TopK { get; init; }

    /// <summary>Keep the smallest set of most likely tokens whose probability reaches p (1 turns it off).</summary>
    public double TopP { get; init; } = 1.0;

    /// <summary>Drop tokens whose probability is below min_p × the most likely one's (0 turns it off).</summary>
    public double MinP { get; init; }

    /// <summary>
    /// transformers' repetition_penalty over the prompt and the generated tokens: a seen token's logit is divided by it
    /// when positive, multiplied when negative (1 turns it off).
    /// </summary>
    public double RepetitionPenalty { get; init; } = 1.0;

    /// <summary>OpenAI's presence penalty: subtracted once from the logit of every token generated so far.</summary>
    public double PresencePenalty { get; init; }

    /// <summary>OpenAI's frequency penalty: subtracted from a token's logit once per time it was generated.</summary>
    public double FrequencyPenalty { get; init; }

    /// <summary>Seed of the draws: the same seed, prompt and options give the same tokens, alone or in a batch. Null: random.</summary>
    public ulong? Seed { get; init; }

    /// <summary>Added to the logits of the given ids before any filtering (−∞ bans a token).</summary>
    public IReadOnlyDictionary<int, float>? LogitBias { get; init; }

    internal bool UsesPenalties => RepetitionPenalty != 1.0 || PresencePenalty != 0 || FrequencyPenalty != 0;

    /// <summary>Checks the ranges against <paramref name="vocab"/>.</summary>
    /// <exception cref="ArgumentOutOfRangeException">A value is out of range (named).</exception>
    public void Validate(int vocab)
    {
        if (!(Temperature >= 0) || double.IsInfinity(Temperature))
        {
            throw new ArgumentOutOfRangeException(nameof(Temperature), Temperature, "temperature must be ≥ 0 (0: greedy).");
        }

        if (TopK < 0)
        {
            throw new ArgumentOutOfRangeException(nameof(TopK), TopK, "top_k must be ≥ 0 (0: off).");
        }

        if (!(TopP > 0 && TopP <= 1))
        {
            throw new ArgumentOutOfRangeException(nameof(TopP), TopP, "top_p must be in (0, 1].");
        }

        if (!(MinP >= 0 && MinP <= 1))
        {
            throw new ArgumentOutOfRangeException(nameof(MinP), MinP, "min_p must be in [0, 1].");
        }

        if (!(RepetitionPenalty > 0) || double.IsInfinity(RepetitionPenalty))
        {
            throw new ArgumentOutOfRangeException(nameof(RepetitionPenalty), RepetitionPenalty, "repetition_penalty must be > 0 (1: off).");
        }

        if (!double.IsFinite(PresencePenalty) || !double.IsFinite(FrequencyPenalty))
        {
            throw new ArgumentOutOfRangeException(nameof(PresencePenalty), "presence and frequency penalties must be finite.");
        }

        foreach (int id in LogitBias?.Keys ?? [])
        {
            if ((uint)id >= vocab)
            {
                throw new ArgumentOutOfRangeException(nameof(LogitBias), id, $"logit bias for id {id}, outside the vocabulary of {vocab}.");
            }
        }
    }
}
