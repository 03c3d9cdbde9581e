using QLoRA.Text.Templates;
using QLoRA.Text.Tokenization;

namespace QLoRA.Text;

/// <summary>
/// Turns training data into token ids with a loss mask, the way TRL's SFTTrainer formats it: conversations through the
/// checkpoint's chat template with loss on the assistant turns (each with its end-of-turn token, so the model learns to
/// stop), prompt/completion pairs with loss on the completion plus EOS, and plain text with loss everywhere plus EOS.
/// Rendered templates are encoded without special tokens: the template writes BOS itself.
/// </summary>
public sealed class ChatFormatter
{
    private readonly HfTokenizer _tokenizer;

    /// <summary>Uses <paramref name="template"/>, or the tokenizer config's default chat template.</summary>
    /// <exception cref="InvalidOperationException">No template given and the checkpoint has none.</exception>
    public ChatFormatter(HfTokenizer tokenizer, ChatTemplate? template = null)
    {
        _tokenizer = tokenizer;
        Template = template ?? (tokenizer.Config.ChatTemplate is { } t
            ? ChatTemplate.Parse(t, tokenizer.Config.ChatTemplateSource ?? "chat_template")
            : null);
    }

    /// <summary>The chat template, or null for a checkpoint without one (conversations then cannot be formatted).</summary>
    public ChatTemplate? Template { get; }

    /// <summary>The clock for templates that call <c>strftime_now</c>.</summary>
    public Func<DateTime>? Now { get; init; }

    /// <summary>The method the last <see cref="EncodeConversation"/> call used.</summary>
    public MaskMethod LastMaskMethod { get; private set; }

    private ChatTemplate RequireTemplate() =>
        Template ?? throw new InvalidOperationException($"{_tokenizer.SourcePath}: the checkpoint has no chat template; pass one to ChatFormatter");

    /// <summary>Renders messages with the template (e.g. a prompt with <paramref name="addGenerationPrompt"/> for inference).</summary>
    public string Render(IReadOnlyList<ChatMessage> messages, bool addGenerationPrompt) =>
        RenderWithSpans(messages, addGenerationPrompt).Text;

    private ChatTemplateOutput RenderWithSpans(IReadOnlyList<ChatMessage> messages, bool addGenerationPrompt) =>
        RequireTemplate().RenderWithSpans(new ChatTemplateInputs
        {
            Messages = messages,
            AddGenerationPrompt = addGenerationPrompt,
            SpecialTokens = _tokenizer.Config.SpecialTokenVariables,
            Now = Now,
        });

    /// <summary>The ids of a rendered prompt, ready for generation.</summary>
    public int[] EncodePrompt(IReadOnlyList<ChatMessage> messages) =>
        _tokenizer.Encode(Render(messages, addGenerationPrompt: true), addSpecialTokens: false);

    /// <summary>
    /// A conversation with loss on every assistant turn and its end-of-turn token. Uses the template's
    /// <c>{% generation %}</c> blocks when it has them; otherwise the text each assistant turn adds to the rendering of
    /// the conversation before it; otherwise (a template that rewrites earlier turns) each assistant content found in order.
    /// </summary>
    /// <exception cref="ChatMaskException">An assistant turn cannot be located in the rendering.</exception>
    public TrainingExample EncodeConversation(IReadOnlyList<ChatMessage> messages)
    {
        var full = RenderWithSpans(messages, addGenerationPrompt: false);
        var encoding = _tokenizer.EncodeWithOffsets(full.Text, addSpecialTokens: false);
        var spans = new List<(int Start, int End)>();
        if (RequireTemplate().HasGenerationBlocks)
        {
            LastMaskMethod = MaskMethod.GenerationBlocks;
            spans.AddRange(full.GenerationSpans.Where(s => s.End > s.Start));
            return Mask(encoding, spans, closeAtEndOfTurn: false);
        }
        if (TryPrefixDiff(messages, full.Text, spans))
        {
            LastMaskMethod = MaskMethod.PrefixDiff;
            return Mask(encoding, spans, closeAtEndOfTurn: true);
        }
        spans.Clear();
        ContentSearch(messages, full.Text, encoding, spans);
        LastMaskMethod = MaskMethod.ContentSearch;
        return Mask(encoding, spans, closeAtEndOfTurn: true);
    }

    private bool TryPrefixDiff(IReadOnlyList<ChatMessage> messages, string full, List<(int, int)> spans)
    {
        for (int i = 0; i < messages.Count; i++)
        {
            if (messages[i].Role != "assistant") continue;
            string before, upTo;
            try
            {
                before = Render(Slice(messages, i), addGenerationPrompt: true);
                upTo = Render(Slice(messages, i + 1), addGenerationPrompt: false);
            }
            catch (TemplateRaisedException)
            {
                return false;   // e.g. a template that refuses a conversation ending in an assistant turn
            }
            if (!upTo.StartsWith(before, StringComparison.Ordinal) || !full.StartsWith(upTo, StringComparison.Ordinal)) return false;
            if (upTo.Length > before.Length) spans.Add((before.Length, upTo.Length));
        }
        return true;
    }

    private static IReadOnlyList<ChatMessage> Slice(IReadOnlyList<ChatMessage> m, int count) => [.. m.Take(count)];

    // Walks the messages in order, finding each content (verbatim or trimmed) at a token boundary outside special
    // tokens and after the previous one found, so an assistant text is never matched inside a header, a special token
    // or an earlier message.
    private void ContentSearch(IReadOnlyList<ChatMessage> messages, string full, TokenEncoding encoding, List<(int, int)> spans)
    {
        var tokenStarts = new HashSet<int>();
        var specialChars = new bool[full.Length + 1];
        for (int i = 0; i < encoding.Ids.Length; i++)
        {
            var (s, e) = encoding.Offsets[i];
            tokenStarts.Add(s);
            if (_tokenizer.IsSpecial(encoding.Ids[i])) for (int c = s; c < e; c++) specialChars[c] = true;
        }
        int Find(string needle, int from)
        {
            for (int k = full.IndexOf(needle, from, StringComparison.Ordinal); k >= 0; k = full.IndexOf(needle, k + 1, StringComparison.Ordinal))
            {
                bool clean = true;
                for (int c = k; c < k + needle.Length && clean; c++) clean = !specialChars[c];
                if (clean && (tokenStarts.Contains(k) || needle.Length == 0)) return k;
            }
            return -1;
        }
        int at = 0;
        foreach (var m in messages)
        {
            if (string.IsNullOrEmpty(m.Content)) continue;
            string content = m.Content;
            int k = Find(content, at);
            if (k < 0 && content.Trim().Length > 0)
            {
                content = content.Trim();
                k = Find(content, at);
            }
            if (k < 0 && content.Contains("</think>"))
            {
                // Reasoning templates (Qwen 3, DeepSeek R1) render earlier assistant turns without their reasoning.
                content = content[(content.LastIndexOf("</think>", StringComparison.Ordinal) + "</think>".Length)..].Trim();
                k = content.Length > 0 ? Find(content, at) : -1;
            }
            if (m.Role != "assistant")
            {
                if (k >= 0) at = k + content.Length;   // a template may rewrite or merge other turns; skip those it does
                continue;
            }
            if (k < 0)
                throw new ChatMaskException($"the assistant turn {Preview(m.Content)} does not appear in the rendered conversation, so its tokens cannot be masked");
            // The span runs to the next special token after the content (its end-of-turn), found when masking.
            spans.Add((k, k + content.Length));
            at = k + content.Length;
        }
    }

    private static string Preview(string s) => s.Length <= 40 ? $"'{s}'" : $"'{s[..40]}…'";

    // Tokens whose start lies in a span are trained. With closeAtEndOfTurn the turn also takes the first special token
    // at or after its text (its end-of-turn: <|eot_id|>, <|im_end|>, <end_of_turn>, </s> …), with at most a few
    // whitespace tokens before it, and nothing after that token.
    private TrainingExample Mask(TokenEncoding encoding, List<(int Start, int End)> spans, bool closeAtEndOfTurn)
    {
        int n = encoding.Ids.Length;
        var mask = new bool[n];
        int t = 0;
        foreach (var (start, end) in spans)
        {
            while (t < n && encoding.Offsets[t].Start < start) t++;
            for (; t < n && encoding.Offsets[t].Start < end; t++)
            {
                mask[t] = true;
                if (closeAtEndOfTurn && IsEndOfTurn(t, encoding)) { t++; goto next; }
            }
            if (!closeAtEndOfTurn) continue;
            for (int k = t; k < n && k < t + 4; k++)
            {
                if (IsEndOfTurn(k, encoding))
                {
                    for (int j = t; j <= k; j++) mask[j] = true;
                    t = k + 1;
                    break;
                }
                if (_tokenizer.Decode([encoding.Ids[k]], cleanUpTokenizationSpaces: false).Trim().Length > 0) break;
            }
            next:;
        }
        return new TrainingExample(encoding.Ids, mask);
    }

    private bool IsEndOfTurn(int t, TokenEncoding encoding) =>
        _tokenizer.IsSpecial(encoding.Ids[t]) && encoding.Offsets[t].End > encoding.Offsets[t].Start;

    /// <summary>
    /// TRL's prompt/completion form: prompt + completion tokenized together (BOS per the tokenizer), EOS appended; loss
    /// on the tokens after the prompt's own tokenization (or, where the two tokenizations disagree at the seam, on the
    /// tokens that start inside the completion).
    /// </summary>
    public TrainingExample EncodePromptCompletion(string prompt, string completion)
    {
        int[] promptIds = _tokenizer.Encode(prompt, addSpecialTokens: true);
        var all = _tokenizer.EncodeWithOffsets(prompt + completion, addSpecialTokens: true);
        var ids = new List<int>(all.Ids);
        int eosId = RequireEos() ?? -1;
        if (eosId >= 0 && (ids.Count == 0 || ids[^1] != eosId)) ids.Add(eosId);
        var mask = new bool[ids.Count];
        bool prefix = promptIds.Length <= all.Ids.Length && all.Ids.AsSpan(0, promptIds.Length).SequenceEqual(promptIds);
        for (int i = 0; i < ids.Count; i++)
            mask[i] = i >= all.Ids.Length || (prefix ? i >= promptIds.Length : all.Offsets[i].Start >= prompt.Length && all.Offsets[i].End > all.Offsets[i].Start);
        return new TrainingExample([.. ids], mask);
    }

    /// <summary>The conversational prompt/completion form: the completion's messages rendered after the prompt's, loss on them.</summary>
    /// <exception cref="ChatMaskException">The rendered prompt is not a prefix of the rendered whole.</exception>
    public TrainingExample EncodePromptCompletion(IReadOnlyList<ChatMessage> prompt, IReadOnlyList<ChatMessage> completion)
    {
        string head = Render(prompt, addGenerationPrompt: true);
        string all = Render([.. prompt, .. completion], addGenerationPrompt: false);
        if (!all.StartsWith(head, StringComparison.Ordinal))
            throw new ChatMaskException("the chat template renders the prompt differently once the completion follows, so the completion cannot be separated");
        var encoding = _tokenizer.EncodeWithOffsets(all, addSpecialTokens: false);
        return Mask(encoding, [(head.Length, all.Length)], closeAtEndOfTurn: false);
    }

    /// <summary>TRL's language-modelling form (<c>{"text"}</c>): every token trained, BOS per the tokenizer, EOS appended.</summary>
    public TrainingExample EncodeText(string text)
    {
        var ids = new List<int>(_tokenizer.Encode(text, addSpecialTokens: true));
        if (RequireEos() is int eos && (ids.Count == 0 || ids[^1] != eos)) ids.Add(eos);
        var mask = new bool[ids.Count];
        Array.Fill(mask, true);
        if (ids.Count > 0 && _tokenizer.SpecialTokensBefore.Contains(ids[0])) mask[0] = false;   // BOS is input, never a target
        return new TrainingExample([.. ids], mask);
    }

    private int? RequireEos() => _tokenizer.EosTokenId;
}
