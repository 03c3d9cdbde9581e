using System.Runtime.CompilerServices;
using QLoRA.Text;
using QLoRA.Text.Templates;
using QLoRA.Text.Tokenization;

namespace QLoRA.Runtime.Generation;

/// <summary>Options of a text-level generation.</summary>
public sealed record TextGenerationOptions
{
    /// <summary>How tokens are chosen (default: greedy).</summary>
    public SamplingOptions Sampling { get; init; } = SamplingOptions.Greedy;

    /// <summary>Most tokens to generate.</summary>
    public int MaxTokens { get; init; } = 256;

    /// <summary>Strings that end the output (not included), also when split across tokens.</summary>
    public IReadOnlyList<string> StopStrings { get; init; } = [];

    /// <summary>The serving adapter's name, or null for the model as loaded.</summary>
    public string? Adapter { get; init; }
}

/// <summary>A streamed piece of text and the tokens that completed it.</summary>
/// <param name="Text">Text that became final (may be empty while a multi-byte character or a possible stop string is held back).</param>
/// <param name="TokenIds">The tokens sampled for this delta.</param>
public sealed record TextDelta(string Text, IReadOnlyList<int> TokenIds);

/// <summary>A finished text generation.</summary>
/// <param name="Text">The generated text (stop string excluded).</param>
/// <param name="Ids">The generated ids (stop token excluded).</param>
/// <param name="Reason">Why it ended.</param>
/// <param name="PromptTokens">Tokens in the prompt.</param>
public sealed record TextResult(string Text, IReadOnlyList<int> Ids, FinishReason Reason, int PromptTokens);

/// <summary>
/// Text in, text out over a <see cref="GenerationEngine"/>: the checkpoint's tokenizer, stop ids (generation_config's
/// eos list, else the tokenizer's eos) and chat template; output streamed through the incremental detokenizer (a
/// multi-byte character split over tokens comes out whole) and cut at stop strings.
/// </summary>
public sealed class TextGenerator
{
    private readonly ChatFormatter? _chat;

    /// <summary>Text generation with <paramref name="tokenizer"/> and the stop ids of <paramref name="generationConfig"/>.</summary>
    public TextGenerator(GenerationEngine engine, HfTokenizer tokenizer, GenerationConfig? generationConfig = null, ChatTemplate? template = null)
    {
        Engine = engine;
        Tokenizer = tokenizer;
        var stops = new List<int>(generationConfig?.EosTokenIds ?? []);
        if (stops.Count == 0 && tokenizer.EosTokenId is int eos)
        {
            stops.Add(eos);
        }

        StopTokenIds = stops;
        if (template is not null || tokenizer.Config.ChatTemplate is not null)
        {
            _chat = new ChatFormatter(tokenizer, template);
        }
    }

    /// <summary>Loads the tokenizer files and generation_config.json of checkpoint folder <paramref name="folder"/>.</summary>
    public static TextGenerator ForFolder(GenerationEngine engine, string folder) =>
        new(engine, HfTokenizer.FromFolder(folder), GenerationConfig.Load(folder));

    /// <summary>The engine.</summary>
    public GenerationEngine Engine { get; }

    /// <summary>The tokenizer.</summary>
    public HfTokenizer Tokenizer { get; }

    /// <summary>Ids that end generation.</summary>
    public IReadOnlyList<int> StopTokenIds { get; }

    /// <summary>Whether a chat template is available.</summary>
    public bool HasChatTemplate => _chat?.Template is not null;

    /// <summary>The prompt ids of <paramref name="messages"/> rendered with the chat template and the generation prompt.</summary>
    /// <exception cref="InvalidOperationException">The checkpoint has no chat template.</exception>
    public int[] EncodeChat(IReadOnlyList<ChatMessage> messages) =>
        (_chat ?? throw new InvalidOperationException($"{Tokenizer.SourcePath}: the checkpoint has no chat template.")).EncodePrompt(messages);

    /// <summary>The ids of a plain prompt (with the tokenizer's special tokens, e.g. BOS).</summary>
    public int[] Encode(string prompt) => Tokenizer.Encode(prompt, addSpecialTokens: true);

    /// <summary>Streams the text generated after <paramref name="promptIds"/>.</summary>
    public IAsyncEnumerable<TextDelta> StreamAsync(IReadOnlyList<int> promptIds, TextGenerationOptions? options = null, CancellationToken cancellationToken = default) =>
        Run(promptIds, options ?? new TextGenerationOptions(), null, cancellationToken);

    /// <summary>Generates after <paramref name="promptIds"/> and returns the whole text.</summary>
    public async Task<TextResult> GenerateAsync(IReadOnlyList<int> promptIds, TextGenerationOptions? options = null, CancellationToken cancellationToken = default)
    {
        var finish = new FinishBox();
        var text = new System.Text.StringBuilder();
        var ids = new List<int>();
        await foreach (TextDelta delta in Run(promptIds, options ?? new TextGenerationOptions(), finish, cancellationToken).ConfigureAwait(false))
        {
            text.Append(delta.Text);
            ids.AddRange(delta.TokenIds);
        }

        return new TextResult(text.ToString(), ids, finish.Reason, promptIds.Count);
    }

    internal sealed class FinishBox
    {
        public FinishReason Reason { get; set; } = FinishReason.Length;
    }

    internal async IAsyncEnumerable<TextDelta> Run(IReadOnlyList<int> promptIds, TextGenerationOptions options, FinishBox? finish, [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        var request = new GenerationRequest(promptIds)
        {
            Sampling = options.Sampling, MaxTokens = options.MaxTokens, StopTokenIds = StopTokenIds, Adapter = options.Adapter,
        };
        var (tokens, completion) = Engine.Start(request, stop.Token);
        IncrementalDetokenizer detokenizer = Tokenizer.CreateDetokenizer();
        var matcher = new StopStringMatcher(options.StopStrings);
        var pendingIds = new List<int>();
        await foreach (GeneratedToken token in tokens.ReadAllAsync(CancellationToken.None).ConfigureAwait(false))
        {
            if (matcher.Stopped)
            {
                continue;
            }

            pendingIds.Add(token.Id);
            string text = matcher.Add(detokenizer.Add(token.Id));
            if (matcher.Stopped)
            {
                stop.Cancel(); // a stop string: end the sequence now
            }

            if (text.Length > 0 || matcher.Stopped)
            {
                yield return new TextDelta(text, [.. pendingIds]);
                pendingIds.Clear();
            }
        }

        GenerationResult result = await completion.ConfigureAwait(false);
        if (!matcher.Stopped)
        {
            string rest = matcher.Add(detokenizer.Flush()) + matcher.Flush();
            if (rest.Length > 0 || pendingIds.Count > 0)
            {
                yield return new TextDelta(rest, [.. pendingIds]);
            }
        }

        if (finish is not null)
        {
            finish.Reason = matcher.Stopped ? FinishReason.Stop : result.Reason;
        }
    }
}
