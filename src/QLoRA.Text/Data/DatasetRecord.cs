using QLoRA.Text.Templates;

namespace QLoRA.Text.Data;

/// <summary>The shapes of a training record, as TRL's SFTTrainer accepts them.</summary>
public enum RecordKind
{
    /// <summary><c>{"text": "…"}</c>: language modelling on all of it.</summary>
    Text,
    /// <summary><c>{"prompt": "…", "completion": "…"}</c>: loss on the completion.</summary>
    PromptCompletion,
    /// <summary><c>{"prompt": [messages], "completion": [messages]}</c>: loss on the completion's messages.</summary>
    ConversationalPromptCompletion,
    /// <summary><c>{"messages": [messages]}</c>: loss on the assistant turns.</summary>
    Messages,
}

/// <summary>One record of a JSONL dataset, with its line for error messages.</summary>
public sealed record DatasetRecord(RecordKind Kind, int Line)
{
    /// <summary>The text (Text) or the prompt (PromptCompletion).</summary>
    public string? Text { get; init; }

    /// <summary>The completion (PromptCompletion).</summary>
    public string? Completion { get; init; }

    /// <summary>The messages (Messages) or the prompt's messages (ConversationalPromptCompletion).</summary>
    public IReadOnlyList<ChatMessage>? Messages { get; init; }

    /// <summary>The completion's messages (ConversationalPromptCompletion).</summary>
    public IReadOnlyList<ChatMessage>? CompletionMessages { get; init; }
}
