using BenchmarkDotNet.Attributes;
using QLoRA.Text;
using QLoRA.Text.Templates;
using QLoRA.Text.Tokenization;

namespace QLoRA.Bench;

/// <summary>Chat-template render time per conversation (6 turns, with a system prompt) and a full training-example encode.</summary>
[MemoryDiagnoser(displayGenColumns: false)]
public class ChatTemplateRender
{
    private ChatTemplate _template = null!;
    private ChatFormatter _formatter = null!;
    private IReadOnlyDictionary<string, string> _specials = null!;
    private List<ChatMessage> _messages = [];

    [Params("llama3_1", "qwen3", "gemma3")]
    public string Model { get; set; } = "qwen3";

    [GlobalSetup]
    public void Setup()
    {
        string cache = TokenizerCache.Folder;
        var tok = HfTokenizer.FromFolder(Path.Combine(cache, Model));
        _template = ChatTemplate.Parse(tok.Config.ChatTemplate!, Model);
        _formatter = new ChatFormatter(tok, _template);
        _specials = tok.Config.SpecialTokenVariables;
        _messages =
        [
            new("system", "You are a concise assistant."),
            new("user", "What is the capital of France?"), new("assistant", "Paris."),
            new("user", "And of Japan? Answer in one word."), new("assistant", "Tokyo."),
            new("user", "Thanks! Now summarize both answers in a sentence."), new("assistant", "Paris is France's capital and Tokyo is Japan's."),
        ];
    }

    [Benchmark(Description = "render conversation")]
    public string Render() => _template.Render(new ChatTemplateInputs { Messages = _messages, SpecialTokens = _specials, AddGenerationPrompt = false });

    [Benchmark(Description = "parse template")]
    public ChatTemplate Parse() => ChatTemplate.Parse(_template.Source, Model);

    [Benchmark(Description = "training example (render + encode + mask)")]
    public TrainingExample Encode() => _formatter.EncodeConversation(_messages);
}
