using QLoRA.Text.Templates;

namespace QLoRA.Text.Data;

/// <summary>
/// A JSONL dataset tokenized for supervised fine-tuning: each record through the checkpoint's tokenizer and chat
/// template (<see cref="ChatFormatter"/>), cut to the maximum length, shuffled with a seed and split into train and eval.
/// </summary>
public sealed class SftDataset
{
    private SftDataset(IReadOnlyList<TrainingExample> train, IReadOnlyList<TrainingExample> eval, IReadOnlyList<(int, string)> skipped, int truncated, int dropped)
    {
        Train = train;
        Eval = eval;
        Skipped = skipped;
        Truncated = truncated;
        Dropped = dropped;
    }

    /// <summary>Training examples, in training order.</summary>
    public IReadOnlyList<TrainingExample> Train { get; }

    /// <summary>Held-out examples.</summary>
    public IReadOnlyList<TrainingExample> Eval { get; }

    /// <summary>Lines skipped under <see cref="BadLinePolicy.Skip"/>, with why.</summary>
    public IReadOnlyList<(int Line, string Problem)> Skipped { get; }

    /// <summary>Examples cut to the maximum length.</summary>
    public int Truncated { get; }

    /// <summary>Examples dropped for length (with truncation off) or for having no trained token left.</summary>
    public int Dropped { get; }

    /// <summary>Reads and tokenizes <paramref name="path"/>.</summary>
    /// <exception cref="DatasetFormatException">A malformed line, or one the template cannot format, with <see cref="BadLinePolicy.Throw"/>.</exception>
    public static SftDataset Load(string path, ChatFormatter formatter, SftDatasetOptions? options = null)
    {
        options ??= new SftDatasetOptions();
        var read = JsonlReader.Read(path, options.BadLines);
        return FromRecords(read.Records, formatter, options, path, [.. read.Skipped]);
    }

    /// <summary>Tokenizes records already in memory; <paramref name="source"/> names them in errors.</summary>
    public static SftDataset FromRecords(IReadOnlyList<DatasetRecord> records, ChatFormatter formatter, SftDatasetOptions options,
        string source = "dataset", List<(int, string)>? skipped = null)
    {
        if (options.MaxSequenceLength < 2) throw new ArgumentOutOfRangeException(nameof(options), "MaxSequenceLength must be at least 2");
        if (options.EvalFraction is < 0 or >= 1 || double.IsNaN(options.EvalFraction))
            throw new ArgumentOutOfRangeException(nameof(options), "EvalFraction must be in [0, 1)");
        skipped ??= [];
        var examples = new List<TrainingExample>(records.Count);
        int truncated = 0, dropped = 0;
        foreach (var r in records)
        {
            TrainingExample ex;
            try
            {
                ex = r.Kind switch
                {
                    RecordKind.Text => formatter.EncodeText(r.Text!),
                    RecordKind.PromptCompletion => formatter.EncodePromptCompletion(r.Text!, r.Completion!),
                    RecordKind.ConversationalPromptCompletion => formatter.EncodePromptCompletion(r.Messages!, r.CompletionMessages!),
                    _ => formatter.EncodeConversation(r.Messages!),
                };
            }
            catch (Exception e) when (e is TemplateException or ChatMaskException or InvalidOperationException)
            {
                if (options.BadLines == BadLinePolicy.Throw) throw new DatasetFormatException(source, r.Line, e.Message, e);
                skipped.Add((r.Line, e.Message));
                continue;
            }
            if (ex.InputIds.Length > options.MaxSequenceLength)
            {
                if (!options.Truncate) { dropped++; continue; }
                ex = new TrainingExample(ex.InputIds[..options.MaxSequenceLength], ex.TrainMask[..options.MaxSequenceLength]);
                truncated++;
            }
            // A target at position 0 has no context to predict it from; an example without any other target trains nothing.
            if (!ex.TrainMask.AsSpan(1).Contains(true)) { dropped++; continue; }
            examples.Add(ex);
        }
        if (options.Shuffle) SplitMix64.Shuffle(examples, options.Seed);
        int evalCount = (int)Math.Round(examples.Count * options.EvalFraction);
        if (options.EvalFraction > 0 && evalCount == 0 && examples.Count > 1) evalCount = 1;
        return new SftDataset(examples.Skip(evalCount).ToList(), examples.Take(evalCount).ToList(), skipped, truncated, dropped);
    }
}

/// <summary>SplitMix64: a small seeded generator whose sequence is the same on every platform and .NET version.</summary>
public struct SplitMix64(ulong seed)
{
    private ulong _state = seed;

    /// <summary>The next 64 random bits.</summary>
    public ulong Next()
    {
        ulong z = _state += 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }

    /// <summary>Uniform in [0, n) without modulo bias.</summary>
    public int NextInt(int n)
    {
        ulong limit = ulong.MaxValue - ulong.MaxValue % (ulong)n;
        ulong v;
        do v = Next(); while (v >= limit);
        return (int)(v % (ulong)n);
    }

    /// <summary>Fisher–Yates shuffle in place.</summary>
    public static void Shuffle<T>(IList<T> items, ulong seed)
    {
        var rng = new SplitMix64(seed);
        for (int i = items.Count - 1; i > 0; i--)
        {
            int j = rng.NextInt(i + 1);
            (items[i], items[j]) = (items[j], items[i]);
        }
    }
}
