using System.Text.Json.Nodes;
using QLoRA.Text.Templates;

namespace QLoRA.Text.Tests;

/// <summary>Completion-only masks: the trained tokens of a conversation are exactly its assistant turns and their end-of-turn tokens.</summary>
public sealed class ChatMaskTests(ITestOutputHelper output)
{
    private static readonly DateTime FixedNow = new(2026, 12, 1, 17, 5, 0);

    public static TheoryData<string> Models => new("llama3", "llama3_1", "qwen3", "gemma3", "deepseek_v3");

    private static List<string> TrainedRuns(HfTokenizer tok, TrainingExample ex)
    {
        var runs = new List<string>();
        int i = 0;
        while (i < ex.InputIds.Length)
        {
            if (!ex.TrainMask[i]) { i++; continue; }
            int j = i;
            while (j < ex.InputIds.Length && ex.TrainMask[j]) j++;
            runs.Add(tok.Decode(ex.InputIds.AsSpan(i, j - i), skipSpecialTokens: false, cleanUpTokenizationSpaces: false));
            i = j;
        }
        return runs;
    }

    [Theory]
    [MemberData(nameof(Models))]
    public void Trained_tokens_decode_to_the_assistant_contents_and_their_end_of_turn(string model)
    {
        var tok = TokenizerFiles.Ours(model);
        var formatter = new ChatFormatter(tok) { Now = () => FixedNow };
        int checkedConversations = 0;
        var methods = new Dictionary<MaskMethod, int>();
        foreach (var conversation in Conversations.All())
        {
            var messages = Conversations.ToMessages(conversation);
            var assistant = messages.Where(m => m.Role == "assistant" && !string.IsNullOrEmpty(m.Content)).ToList();
            if (assistant.Count == 0) continue;
            TrainingExample ex;
            try
            {
                ex = formatter.EncodeConversation(messages);
            }
            catch (TemplateException)
            {
                continue;   // the template refuses this conversation (roles that do not alternate; jinja2 fails alike)
            }
            catch (ChatMaskException e)
            {
                Assert.Fail($"{model}: {e.Message} in {conversation.ToJsonString()}");
                return;
            }
            checkedConversations++;
            methods[formatter.LastMaskMethod] = methods.GetValueOrDefault(formatter.LastMaskMethod) + 1;
            Assert.Equal(tok.Encode(formatter.Render(messages, false), addSpecialTokens: false), ex.InputIds);
            var runs = TrainedRuns(tok, ex);
            int r = 0;
            foreach (var turn in messages.Where(m => m.Role == "assistant"))
            {
                string content = turn.Content ?? "";
                if (content.Trim().Length == 0)
                {
                    // An empty turn (or one the template renders as empty, e.g. tool calls it ignores) trains at most its end token.
                    if (r < runs.Count && EndsWithSpecial(tok, runs[r], out string onlyEnd) && StripThink(runs[r][..^onlyEnd.Length]).Trim().Length == 0) r++;
                    continue;
                }
                Assert.True(r < runs.Count, $"{model}: no trained run for the turn {ReferenceTokenizerTests.Escape(content)} in {conversation.ToJsonString()}");
                string run = runs[r++];
                Assert.True(EndsWithSpecial(tok, run, out string endToken), $"{model}: {ReferenceTokenizerTests.Escape(run)} does not end with a special token");
                string body = run[..^endToken.Length];
                // Templates render the content verbatim or trimmed; Qwen 3 writes an (empty) think block before the final
                // turn and keeps only the text after "</think>" of earlier turns.
                string afterThink = content.Contains("</think>") ? content[(content.LastIndexOf("</think>", StringComparison.Ordinal) + 8)..].Trim() : content;
                string b = StripThink(body);
                Assert.True(body == content || body == content.Trim() || b == content.Trim() || b == afterThink || body == afterThink
                            || (body.StartsWith("<think>") && body.Trim() == content.Trim()),
                    $"{model}: trained text {ReferenceTokenizerTests.Escape(run)} is not the content {ReferenceTokenizerTests.Escape(content)} + end-of-turn");
            }
            Assert.True(r == runs.Count, $"{model}: {runs.Count - r} trained runs beyond the assistant turns: {string.Join(" | ", runs.Skip(r))}");
        }
        output.WriteLine($"{model}: {checkedConversations} conversations, methods {string.Join(", ", methods.Select(kv => $"{kv.Key}={kv.Value}"))}");
        Assert.True(checkedConversations >= 8);
    }

    private static bool EndsWithSpecial(HfTokenizer tok, string run, out string token)
    {
        token = tok.AddedTokens.Where(a => a.Special && run.EndsWith(a.Content, StringComparison.Ordinal)).Select(a => a.Content).FirstOrDefault() ?? "";
        return token.Length > 0;
    }

    private static string StripThink(string body) =>
        body.StartsWith("<think>", StringComparison.Ordinal) && body.Contains("</think>")
            ? body[(body.IndexOf("</think>", StringComparison.Ordinal) + "</think>".Length)..].Trim() : body;

    [Fact]
    public void Generation_blocks_give_the_spans_when_the_template_has_them()
    {
        var tok = TokenizerFiles.Ours("llama3");
        var template = ChatTemplate.Parse(FeatureTemplates.All.Single(f => f.Name == "generation-blocks").Source, "generation-blocks");
        Assert.True(template.HasGenerationBlocks);
        var formatter = new ChatFormatter(tok, template);
        var messages = Conversations.ToMessages(new JsonArray
        {
            new JsonObject { ["role"] = "user", ["content"] = "Hi" },
            new JsonObject { ["role"] = "assistant", ["content"] = "Hello there" },
            new JsonObject { ["role"] = "user", ["content"] = "Bye" },
            new JsonObject { ["role"] = "assistant", ["content"] = "Goodbye" },
        });
        var ex = formatter.EncodeConversation(messages);
        Assert.Equal(MaskMethod.GenerationBlocks, formatter.LastMaskMethod);
        Assert.Equal(["Hello there<|end_of_text|>", "Goodbye<|end_of_text|>"], TrainedRuns(tok, ex));
    }

    [Fact]
    public void Prompt_completion_trains_the_completion_and_eos()
    {
        var tok = TokenizerFiles.Ours("llama2");
        var formatter = new ChatFormatter(tok, ChatTemplate.Parse("{{ messages[0].content }}"));
        var ex = formatter.EncodePromptCompletion("Translate: chat", " cat");
        Assert.Equal(tok.BosTokenId, ex.InputIds[0]);
        Assert.Equal(tok.EosTokenId, ex.InputIds[^1]);
        Assert.False(ex.TrainMask[0]);
        Assert.True(ex.TrainMask[^1]);
        // As TRL: prompt + completion tokenized together, the completion's tokens after the prompt's, EOS appended.
        Assert.Equal(tok.Encode("Translate: chat cat", addSpecialTokens: true).Append(tok.EosTokenId!.Value), ex.InputIds);
        Assert.Equal(["cat</s>"], TrainedRuns(tok, ex));
        var text = formatter.EncodeText("Just text.");
        Assert.False(text.TrainMask[0]);            // BOS is never a target
        Assert.True(text.TrainMask[1..].All(x => x));
        Assert.Equal(tok.EosTokenId, text.InputIds[^1]);   // EOS is trained even though it may equal pad
    }

    [Fact]
    public void Conversational_prompt_completion_masks_the_completion_turn()
    {
        var tok = TokenizerFiles.Ours("qwen3");
        var formatter = new ChatFormatter(tok);
        var prompt = Conversations.ToMessages(new JsonArray { new JsonObject { ["role"] = "user", ["content"] = "2+2?" } });
        var completion = Conversations.ToMessages(new JsonArray { new JsonObject { ["role"] = "assistant", ["content"] = "4" } });
        var ex = formatter.EncodePromptCompletion(prompt, completion);
        var runs = TrainedRuns(tok, ex);
        Assert.Single(runs);
        Assert.StartsWith("<think>", runs[0]);
        Assert.EndsWith("4<|im_end|>\n", runs[0]);
    }
}
