using QLoRA.Text.Data;

namespace QLoRA.Text.Tests;

/// <summary>JSONL in TRL's shapes → masked examples → packed rows with sequence boundaries and shifted labels.</summary>
public sealed class DatasetTests
{
    private static string WriteJsonl(params string[] lines)
    {
        string path = Path.Combine(Directory.CreateTempSubdirectory("qlora-data-").FullName, "train.jsonl");
        File.WriteAllLines(path, lines);
        return path;
    }

    private const string Messages = """{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}""";
    private const string PromptCompletion = """{"prompt": "2+2=", "completion": "4"}""";
    private const string ConversationalPc = """{"prompt": [{"role": "user", "content": "Capital of France?"}], "completion": [{"role": "assistant", "content": "Paris."}]}""";
    private const string Text = """{"text": "The quick brown fox."}""";

    [Fact]
    public void Reads_every_trl_shape()
    {
        var read = JsonlReader.Read(WriteJsonl(Messages, "", PromptCompletion, ConversationalPc, "   ", Text));
        Assert.Equal([RecordKind.Messages, RecordKind.PromptCompletion, RecordKind.ConversationalPromptCompletion, RecordKind.Text],
            read.Records.Select(r => r.Kind));
        Assert.Equal([1, 3, 4, 6], read.Records.Select(r => r.Line));
        Assert.Empty(read.Skipped);
    }

    public static TheoryData<string, string> BadLines => new()
    {
        { "not json", "not valid JSON" },
        { "[1, 2]", "must be a JSON object" },
        { """{"foo": 1}""", "has none of" },
        { """{"text": 5}""", "\"text\" must be a string" },
        { """{"text": "a", "messages": []}""", "mixes" },
        { """{"prompt": "a"}""", "needs both" },
        { """{"prompt": "a", "completion": [{"role": "assistant", "content": "b"}]}""", "both be strings or both be message lists" },
        { """{"messages": [{"content": "x"}]}""", "no string \"role\"" },
        { """{"messages": [{"role": "user", "content": "only a question"}]}""", "no assistant turn" },
        { """{"messages": []}""", "is empty" },
        { """{"messages": ["hi"]}""", "must be an object" },
    };

    [Theory]
    [MemberData(nameof(BadLines))]
    public void A_bad_line_names_the_file_and_line_or_is_skipped_and_counted(string bad, string problem)
    {
        string path = WriteJsonl(Messages, bad, Text);
        var e = Assert.Throws<DatasetFormatException>(() => JsonlReader.Read(path));
        Assert.Equal(2, e.Line);
        Assert.Contains(path, e.Message);
        Assert.Contains("line 2", e.Message);
        Assert.Contains(problem, e.Message);
        var read = JsonlReader.Read(path, BadLinePolicy.Skip);
        Assert.Equal(2, read.Records.Count);
        Assert.Equal(2, Assert.Single(read.Skipped).Line);
    }

    [Fact]
    public void Invalid_utf8_is_a_typed_error()
    {
        string path = WriteJsonl(Text);
        File.AppendAllBytes(path, [0x7B, 0x22, 0xFF, 0xFE, 0x22, 0x7D, 0x0A]);
        Assert.Equal(2, Assert.Throws<DatasetFormatException>(() => JsonlReader.Read(path)).Line);
    }

    [Fact]
    public void Examples_are_masked_truncated_shuffled_and_split_deterministically()
    {
        var tok = TokenizerFiles.Ours("qwen3");
        var formatter = new ChatFormatter(tok);
        var lines = Enumerable.Range(0, 40).Select(i => (i % 4) switch
        {
            0 => $$"""{"messages": [{"role": "user", "content": "Question {{i}}?"}, {"role": "assistant", "content": "Answer {{i}}."}]}""",
            1 => $$"""{"prompt": "Say {{i}}:", "completion": " {{i}}"}""",
            2 => $$"""{"prompt": [{"role": "user", "content": "Count to {{i}}"}], "completion": [{"role": "assistant", "content": "{{string.Join(" ", Enumerable.Range(1, i))}}"}]}""",
            _ => $$"""{"text": "{{string.Concat(Enumerable.Repeat("word ", i * 10))}}"}""",
        }).ToArray();
        string path = WriteJsonl(lines);
        var options = new SftDatasetOptions { MaxSequenceLength = 64, EvalFraction = 0.1, Seed = 7 };
        var a = SftDataset.Load(path, formatter, options);
        var b = SftDataset.Load(path, formatter, options);
        Assert.Equal(36, a.Train.Count);
        Assert.Equal(4, a.Eval.Count);
        Assert.True(a.Truncated > 0);
        Assert.All(a.Train.Concat(a.Eval), ex => Assert.InRange(ex.InputIds.Length, 2, 64));
        Assert.Equal(a.Train.Select(e => string.Join(",", e.InputIds)), b.Train.Select(e => string.Join(",", e.InputIds)));
        var c = SftDataset.Load(path, formatter, options with { Seed = 8 });
        Assert.NotEqual(a.Train.Select(e => string.Join(",", e.InputIds)), c.Train.Select(e => string.Join(",", e.InputIds)));
        // Every conversation example trains its <|im_end|>: the model learns to stop.
        int imEnd = tok.TokenToId("<|im_end|>")!.Value;
        foreach (var ex in a.Train.Where(e => e.InputIds.Contains(imEnd) && e.InputIds.Length < 64))
            Assert.True(ex.TrainMask[Array.LastIndexOf(ex.InputIds, imEnd)]);
        var dropped = SftDataset.Load(path, formatter, options with { Truncate = false });
        Assert.Equal(a.Truncated, dropped.Dropped);
    }

    [Fact]
    public void Eos_is_trained_even_when_it_is_also_the_pad_token()
    {
        string dir = Directory.CreateTempSubdirectory("qlora-pad-").FullName;
        File.Copy(Path.Combine(TokenizerFiles.Folder("llama3"), "tokenizer.json"), Path.Combine(dir, "tokenizer.json"));
        File.WriteAllText(Path.Combine(dir, "tokenizer_config.json"), """{"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>", "pad_token": "<|end_of_text|>"}""");
        var tok = HfTokenizer.FromFolder(dir);
        Assert.Equal(tok.PadTokenId, tok.EosTokenId);
        var formatter = new ChatFormatter(tok, Templates.ChatTemplate.Parse("{{ messages[0].content }}"));
        var batch = Packer.Build([formatter.EncodePromptCompletion("1 2 3", " 4")]);
        Assert.Equal(tok.EosTokenId, batch.Labels[^2]);     // the position before EOS predicts EOS
        Assert.Equal(PackedBatch.IgnoreIndex, batch.Labels[^1]);
    }

    [Fact]
    public void Packing_fills_rows_without_crossing_examples()
    {
        var rng = new Random(3);
        var examples = Enumerable.Range(0, 200).Select(i =>
        {
            int n = rng.Next(2, 90);
            var ids = Enumerable.Range(0, n).Select(_ => rng.Next(1000)).ToArray();
            var mask = ids.Select((_, t) => t >= n / 2).ToArray();
            return new TrainingExample(ids, mask);
        }).ToList();
        examples.Add(new TrainingExample(Enumerable.Range(0, 300).ToArray(), Enumerable.Repeat(true, 300).ToArray()));   // longer than the budget
        const int budget = 128;
        var rows = Packer.Pack(examples, budget);
        Assert.Equal(rows.Select(r => string.Join(",", r.InputIds)), Packer.Pack(examples, budget).Select(r => string.Join(",", r.InputIds)));
        Assert.All(rows, r => Assert.InRange(r.InputIds.Length, 1, budget));
        Assert.Equal(examples.Count, rows.Sum(r => r.Sequences));
        int expectedTokens = examples.Sum(e => Math.Min(e.InputIds.Length, budget));
        Assert.Equal(expectedTokens, rows.Sum(r => r.InputIds.Length));
        // Best fit decreasing leaves little room: at most one row more than the lower bound, plus a margin for the tail.
        int lowerBound = (expectedTokens + budget - 1) / budget;
        Assert.InRange(rows.Count, lowerBound, lowerBound + 3);
        var seen = new HashSet<string>();
        foreach (var row in rows)
        {
            Assert.Equal(0, row.CumulativeLengths[0]);
            Assert.Equal(row.InputIds.Length, row.CumulativeLengths[^1]);
            for (int k = 0; k < row.Sequences; k++)
            {
                int s = row.CumulativeLengths[k], e = row.CumulativeLengths[k + 1];
                Assert.True(e > s);
                var ids = row.InputIds[s..e];
                seen.Add(string.Join(",", ids));
                var source = examples.First(x => x.InputIds.AsSpan(0, Math.Min(x.InputIds.Length, budget)).SequenceEqual(ids));
                for (int t = 0; t < e - s; t++)
                {
                    Assert.Equal(t, row.PositionIds[s + t]);
                    int expected = t + 1 < e - s && source.TrainMask[t + 1] ? source.InputIds[t + 1] : PackedBatch.IgnoreIndex;
                    Assert.Equal(expected, row.Labels[s + t]);    // never the first token of the next example
                }
            }
        }
        Assert.Equal(examples.Select(e => string.Join(",", e.InputIds.Take(budget))).Distinct().Count(), seen.Count);
        // The loss normalizer is the number of trained targets.
        Assert.Equal(examples.Sum(e => Enumerable.Range(1, Math.Min(e.InputIds.Length, budget) - 1).Count(t => e.TrainMask[t])), rows.Sum(r => r.TargetTokens));
    }
}
