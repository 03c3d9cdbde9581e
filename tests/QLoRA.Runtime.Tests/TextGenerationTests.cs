using Microsoft.Extensions.AI;
using QLoRA.Runtime.Engine;
using QLoRA.Runtime.Generation;
using QLoRA.Runtime.Models;
using QLoRA.Text.Tokenization;
using TemplateMessage = QLoRA.Text.Templates.ChatMessage;

namespace QLoRA.Runtime.Tests;

/// <summary>
/// Text out of the engine, on the scripted model: streamed deltas are whole characters (a 4-byte emoji split over four
/// tokens comes out once, whole), stop strings end the output also when they span tokens, and the IChatClient's
/// streaming and non-streaming answers agree and honour the options.
/// </summary>
public sealed class TextGenerationTests(CpuDeviceFixture fixture) : IClassFixture<CpuDeviceFixture>, IDisposable
{
    private readonly string _folder = ScriptedModel.Write();
    private LlamaForCausalLM? _llama;
    private GenerationEngine? _engine;

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private TextGenerator Generator()
    {
        _llama = LlamaForCausalLM.LoadModel(fixture.Device, _folder, new QLoRA.Modeling.LoadOptions(KeepProjectionsDense: true));
        _engine = new GenerationEngine(EngineModel.Of(_llama), new GenerationEngineOptions { MaxBatch = 4, MaxSequenceLength = 128, PageTokens = 8, StepTokens = 32 });
        return TextGenerator.ForFolder(_engine, _folder);
    }

    private int[] ChatPrompt(TextGenerator g) => g.EncodeChat([new TemplateMessage("user", "hi")]);

    [Fact]
    public async Task StreamsWholeCharactersAndStopsAtTheEosToken()
    {
        TextGenerator g = Generator();
        var deltas = new List<TextDelta>();
        await foreach (TextDelta d in g.StreamAsync(ChatPrompt(g), cancellationToken: Ct))
        {
            deltas.Add(d);
        }

        Assert.Equal(ScriptedModel.Script, string.Concat(deltas.Select(d => d.Text)));
        Assert.Contains(deltas, d => d.Text == "😀" && d.TokenIds.Count == 4); // four byte tokens, one delta
        Assert.All(deltas, d => Assert.DoesNotContain('\uFFFD', d.Text));
        TextResult whole = await g.GenerateAsync(ChatPrompt(g), cancellationToken: Ct);
        Assert.Equal(ScriptedModel.Script, whole.Text);
        Assert.Equal(FinishReason.Stop, whole.Reason); // <|end|>, from generation_config's eos list
        Assert.Equal(System.Text.Encoding.UTF8.GetByteCount(ScriptedModel.Script), whole.Ids.Count);
    }

    [Theory]
    [InlineData("k br", "Quic")]
    [InlineData("né", "Quick brow")]
    [InlineData("€😀", "Quick browné")]
    [InlineData("xyz", "Quick brown" + "é€😀")]
    public async Task StopStringsAcrossTokens(string stop, string expected)
    {
        TextGenerator g = Generator();
        TextResult r = await g.GenerateAsync(ChatPrompt(g), new TextGenerationOptions { StopStrings = [stop] }, Ct);
        Assert.Equal(expected, r.Text);
        Assert.Equal(FinishReason.Stop, r.Reason);
        var streamed = new List<string>();
        await foreach (TextDelta d in g.StreamAsync(ChatPrompt(g), new TextGenerationOptions { StopStrings = [stop, "zz"] }, Ct))
        {
            streamed.Add(d.Text);
        }

        Assert.Equal(expected, string.Concat(streamed));
        Assert.Equal(_engine!.Cache.PageCount, await WaitFree());
    }

    private async Task<int> WaitFree()
    {
        for (int i = 0; i < 400 && _engine!.Cache.FreePages != _engine.Cache.PageCount; i++)
        {
            await Task.Delay(5, Ct);
        }

        return _engine!.Cache.FreePages;
    }

    [Fact]
    public void MatcherHoldsBackPossibleStarts()
    {
        var m = new StopStringMatcher(["</s>", "ab"]);
        Assert.Equal("x", m.Add("x<"));
        Assert.Equal("", m.Add("/"));
        Assert.Equal("</", m.Add("a")); // "</a" cannot become "</s>"; "a" may still start "ab"
        Assert.Equal("", m.Add("b"));
        Assert.True(m.Stopped);
        Assert.Equal("ab", m.Matched);
    }

    [Fact]
    public async Task ChatClientStreamingAndNonStreamingAgreeAndHonourOptions()
    {
        TextGenerator g = Generator();
        IChatClient client = new QLoRAChatClient(g, "scripted");
        ChatMessage[] messages = [new(ChatRole.User, "hi")];
        ChatResponse response = await client.GetResponseAsync(messages, cancellationToken: Ct);
        Assert.Equal(ScriptedModel.Script, response.Text);
        Assert.Equal(ChatFinishReason.Stop, response.FinishReason);
        Assert.Equal(ChatPrompt(g).Length, response.Usage!.InputTokenCount);
        Assert.Equal(System.Text.Encoding.UTF8.GetByteCount(ScriptedModel.Script), response.Usage.OutputTokenCount);

        var updates = new List<ChatResponseUpdate>();
        await foreach (ChatResponseUpdate u in client.GetStreamingResponseAsync(messages, cancellationToken: Ct))
        {
            updates.Add(u);
        }

        Assert.Equal(response.Text, string.Concat(updates.Select(u => u.Text)));
        Assert.Equal(ChatFinishReason.Stop, updates[^1].FinishReason);
        ChatResponse fromUpdates = updates.ToChatResponse();
        Assert.Equal(response.Usage.OutputTokenCount, fromUpdates.Usage!.OutputTokenCount);

        ChatResponse limited = await client.GetResponseAsync(messages, new ChatOptions { MaxOutputTokens = 5 }, Ct);
        Assert.Equal("Quick", limited.Text);
        Assert.Equal(ChatFinishReason.Length, limited.FinishReason);
        ChatResponse stopped = await client.GetResponseAsync(messages, new ChatOptions { StopSequences = ["own"] }, Ct);
        Assert.Equal("Quick br", stopped.Text);

        // Sampling options reach the sampler: a seeded draw at high temperature, repeated, is the same draw.
        var hot = new ChatOptions { Temperature = 50f, TopK = 40, Seed = 7, MaxOutputTokens = 6 };
        Assert.Equal((await client.GetResponseAsync(messages, hot, Ct)).Text, (await client.GetResponseAsync(messages, hot, Ct)).Text);
        Assert.NotEqual("Quick ", (await client.GetResponseAsync(messages, hot, Ct)).Text);

        // Concurrent requests batch and each gets its own answer.
        ChatResponse[] many = await Task.WhenAll(Enumerable.Range(0, 6).Select(_ => client.GetResponseAsync(messages, cancellationToken: Ct)));
        Assert.All(many, r => Assert.Equal(ScriptedModel.Script, r.Text));
        Assert.IsType<ChatClientMetadata>(client.GetService(typeof(ChatClientMetadata)));
    }

    public void Dispose()
    {
        _engine?.Dispose();
        _llama?.Dispose();
        Directory.Delete(_folder, recursive: true);
    }
}
