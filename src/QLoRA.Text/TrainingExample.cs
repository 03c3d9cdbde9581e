namespace QLoRA.Text;

/// <summary>One tokenized training example: ids and, per id, whether its prediction is trained (a loss target).</summary>
/// <param name="InputIds">Token ids.</param>
/// <param name="TrainMask">true where the token is a target: assistant/completion tokens and the end-of-turn token that closes each.</param>
public sealed record TrainingExample(int[] InputIds, bool[] TrainMask)
{
    /// <summary>Number of trained tokens.</summary>
    public int TrainedTokens => TrainMask.Count(t => t);
}

/// <summary>How the assistant tokens of a conversation were located.</summary>
public enum MaskMethod
{
    /// <summary>The template's <c>{% generation %}</c> blocks.</summary>
    GenerationBlocks,
    /// <summary>Rendering each prefix of the conversation and taking the text each assistant turn adds.</summary>
    PrefixDiff,
    /// <summary>Finding each assistant content, in order, in the rendered conversation.</summary>
    ContentSearch,
}

/// <summary>The assistant turns of a conversation could not be located in its rendering (see the message for why).</summary>
public sealed class ChatMaskException(string message) : Exception(message);
