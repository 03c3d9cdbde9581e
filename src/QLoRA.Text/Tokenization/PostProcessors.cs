namespace QLoRA.Text.Tokenization;

/// <summary>A tokenizer.json post-processor: adds special tokens to an encoded sequence and adjusts offsets.</summary>
internal abstract class PostProcessor
{
    /// <summary>Rewrites the encoding in place; <paramref name="addSpecialTokens"/> is the caller's <c>add_special_tokens</c>.</summary>
    public abstract void Process(List<int> ids, List<(int Start, int End)>? offsets, bool addSpecialTokens, Func<int, string?> idToToken);
}

internal sealed class SequencePostProcessor(IReadOnlyList<PostProcessor> steps) : PostProcessor
{
    public override void Process(List<int> ids, List<(int, int)>? offsets, bool addSpecialTokens, Func<int, string?> idToToken)
    {
        foreach (var s in steps) s.Process(ids, offsets, addSpecialTokens, idToToken);
    }
}

/// <summary><c>TemplateProcessing</c> (single sequences): special tokens before and after the sequence, with empty offsets.</summary>
internal sealed class TemplatePostProcessor(IReadOnlyList<int> before, IReadOnlyList<int> after) : PostProcessor
{
    public IReadOnlyList<int> Before => before;
    public IReadOnlyList<int> After => after;

    public override void Process(List<int> ids, List<(int, int)>? offsets, bool addSpecialTokens, Func<int, string?> idToToken)
    {
        if (!addSpecialTokens) return;
        ids.InsertRange(0, before);
        ids.AddRange(after);
        if (offsets is null) return;
        offsets.InsertRange(0, Enumerable.Repeat((0, 0), before.Count));
        offsets.AddRange(Enumerable.Repeat((0, 0), after.Count));
    }
}

/// <summary><c>ByteLevel</c> post-processor: with <c>trim_offsets</c>, token offsets leave out leading and trailing spaces.</summary>
internal sealed class ByteLevelPostProcessor(bool trimOffsets, bool addPrefixSpace) : PostProcessor
{
    public override void Process(List<int> ids, List<(int Start, int End)>? offsets, bool addSpecialTokens, Func<int, string?> idToToken)
    {
        if (!trimOffsets || offsets is null) return;
        char space = ByteLevelAlphabet.ByteToChar[' '];
        for (int i = 0; i < ids.Count; i++)
        {
            string? token = idToToken(ids[i]);
            if (token is null) continue;
            int lead = 0;
            while (lead < token.Length && (token[lead] == space || char.IsWhiteSpace(token[lead]))) lead++;
            int trail = 0;
            while (trail < token.Length && (token[^(trail + 1)] == space || char.IsWhiteSpace(token[^(trail + 1)]))) trail++;
            var (s, e) = offsets[i];
            if (lead > 0)
            {
                bool first = i == 0 || s == 0;
                if (first && addPrefixSpace && lead == 1) lead = 0;
                s = Math.Min(s + lead, e);
            }
            if (trail > 0 && e >= trail) e = Math.Max(e - trail, s);
            offsets[i] = (s, e);
        }
    }
}
