namespace QLoRA.Runtime.Generation;

/// <summary>Sizes of a <see cref="GenerationEngine"/>, fixed when it is created (the cache and the arena are allocated once).</summary>
public sealed record GenerationEngineOptions
{
    /// <summary>Sequences decoded together in one step (continuous batching: a finished one's place is taken at the next step).</summary>
    public int MaxBatch { get; init; } = 16;

    /// <summary>Longest sequence, prompt plus output; 0: the model's max_position_embeddings, at most 4096.</summary>
    public int MaxSequenceLength { get; init; }

    /// <summary>Positions the KV cache holds over all sequences; 0: MaxBatch × MaxSequenceLength, at most 65,536.</summary>
    public int CacheTokens { get; init; }

    /// <summary>Positions per cache page.</summary>
    public int PageTokens { get; init; } = 16;

    /// <summary>Rows one step runs: decode rows first, then prompt chunks up to this budget (chunked prefill).</summary>
    public int StepTokens { get; init; } = 256;

    /// <summary>
    /// On CUDA, capture decode steps (no adapters, up to 8 sequences) as CUDA graphs, one per batch size, and replay
    /// them; plain launches where capture is unavailable, on the CPU accelerator, or when false.
    /// </summary>
    public bool CudaGraphs { get; init; } = true;
}

/// <summary>What one sequence asks for.</summary>
/// <param name="PromptIds">The prompt's token ids (at least one).</param>
public sealed record GenerationRequest(IReadOnlyList<int> PromptIds)
{
    /// <summary>How tokens are chosen (default: greedy).</summary>
    public SamplingOptions Sampling { get; init; } = SamplingOptions.Greedy;

    /// <summary>Most tokens to generate (the sequence also ends at the engine's MaxSequenceLength).</summary>
    public int MaxTokens { get; init; } = 256;

    /// <summary>Ids that end the sequence (not part of the output): generation_config's eos ids, a list for Llama 3.</summary>
    public IReadOnlyList<int> StopTokenIds { get; init; } = [];

    /// <summary>The serving adapter's name (see <see cref="GenerationEngine.Adapters"/>); null: the model as loaded.</summary>
    public string? Adapter { get; init; }
}

/// <summary>Why a sequence ended.</summary>
public enum FinishReason
{
    /// <summary>A stop token (or, at the text level, a stop string).</summary>
    Stop,

    /// <summary>MaxTokens, or the engine's longest sequence.</summary>
    Length,

    /// <summary>The caller's cancellation token.</summary>
    Cancelled,
}

/// <summary>One generated token as it is streamed.</summary>
/// <param name="Id">The token id.</param>
/// <param name="LogProb">Its log-probability under the model (unprocessed logits: before penalties, temperature or filters).</param>
/// <param name="Index">Its index in the output (0 for the first).</param>
public readonly record struct GeneratedToken(int Id, float LogProb, int Index);

/// <summary>A finished sequence.</summary>
/// <param name="PromptIds">The prompt.</param>
/// <param name="Ids">The generated ids (a stop token is not included).</param>
/// <param name="LogProbs">Each generated id's log-probability under the model.</param>
/// <param name="Reason">Why it ended.</param>
/// <param name="StopTokenId">The stop token that ended it, if one did.</param>
public sealed record GenerationResult(IReadOnlyList<int> PromptIds, IReadOnlyList<int> Ids, IReadOnlyList<float> LogProbs, FinishReason Reason, int? StopTokenId);
