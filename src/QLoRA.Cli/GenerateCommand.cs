using System.CommandLine;
using System.Text.Json;
using System.Text.Json.Nodes;
using QLoRA.Runtime.Generation;
using TemplateMessage = QLoRA.Text.Templates.ChatMessage;

namespace QLoRA.Cli;

/// <summary>
/// <c>qlora generate --model M [--adapter A] (--prompt P | --tokens 1,2,3) [--max-tokens N] [--temperature T] [--top-p P]
/// [--top-k K] [--seed S] [--chat] [--quantize nf4|fp4|none] [--json]</c>: streams the continuation (greedy at
/// temperature 0); <c>--json</c> prints <c>{"prompt_ids", "ids", "text"}</c> and needs no tokenizer with <c>--tokens</c>.
/// </summary>
internal static class GenerateCommand
{
    public static Command Create(CommandContext context)
    {
        var model = ServingModel.ModelOption();
        var adapter = ServingModel.AdapterOption();
        var prompt = new Option<string?>("--prompt") { Description = "The prompt text (tokenized with the model's tokenizer)" };
        var tokens = new Option<string?>("--tokens") { Description = "The prompt as token ids, comma-separated" };
        var maxTokens = new Option<int>("--max-tokens") { Description = "Most tokens to generate", DefaultValueFactory = _ => 128 };
        var temperature = new Option<double>("--temperature") { Description = "Sampling temperature; 0 is greedy", DefaultValueFactory = _ => 0 };
        var topP = new Option<double>("--top-p") { Description = "Nucleus sampling: keep the most likely tokens up to this probability mass", DefaultValueFactory = _ => 1 };
        var topK = new Option<int>("--top-k") { Description = "Keep the k most likely tokens (0: all)", DefaultValueFactory = _ => 0 };
        var seed = new Option<ulong?>("--seed") { Description = "Seed of the draws (the same seed gives the same text)" };
        var chat = new Option<bool>("--chat") { Description = "Wrap the prompt as a user message with the model's chat template" };
        var quantize = ServingModel.QuantizeOption();
        var json = new Option<bool>("--json") { Description = "Print {\"prompt_ids\", \"ids\", \"text\"} instead of streaming text" };
        var command = new Command("generate", "Generate a continuation of a prompt (streamed)") { model, adapter, prompt, tokens, maxTokens, temperature, topP, topK, seed, chat, quantize, json };
        command.SetAction(parsed =>
        {
            string? text = parsed.GetValue(prompt), ids = parsed.GetValue(tokens);
            if ((text is null) == (ids is null))
            {
                throw new CliException("give exactly one of --prompt and --tokens");
            }

            if (parsed.GetValue(maxTokens) <= 0)
            {
                throw new CliException("--max-tokens must be positive");
            }

            var sampling = new SamplingOptions
            {
                Temperature = parsed.GetValue(temperature), TopP = parsed.GetValue(topP), TopK = parsed.GetValue(topK), Seed = parsed.GetValue(seed),
            };
            using ServingModel served = ServingModel.Load(parsed.GetValue(model)!, parsed.GetValue(adapter), parsed.GetValue(quantize)!);
            sampling.Validate(served.Engine.Model.Config.VocabSize);
            int[] promptIds;
            if (ids is not null)
            {
                promptIds = ServingModel.ParseTokens(ids, "--tokens");
            }
            else
            {
                TextGenerator generator = served.Text ?? throw new CliException($"{served.Folder} has no tokenizer.json: give the prompt as --tokens");
                promptIds = parsed.GetValue(chat) ? generator.EncodeChat([new TemplateMessage("user", text)]) : generator.Encode(text!);
            }

            var request = new GenerationRequest(promptIds)
            {
                Sampling = sampling, MaxTokens = parsed.GetValue(maxTokens), StopTokenIds = served.StopTokenIds, Adapter = served.Adapter,
            };
            if (parsed.GetValue(json))
            {
                GenerationResult result = served.Engine.Generate(request);
                var output = new JsonObject
                {
                    ["prompt_ids"] = new JsonArray([.. promptIds.Select(i => (JsonNode?)i)]),
                    ["ids"] = new JsonArray([.. result.Ids.Select(i => (JsonNode?)i)]),
                    ["text"] = served.Text?.Tokenizer.Decode([.. result.Ids], skipSpecialTokens: true),
                    ["finish_reason"] = result.Reason.ToString().ToLowerInvariant(),
                };
                context.Output.WriteLine(output.ToJsonString(new JsonSerializerOptions { Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping }));
                return 0;
            }

            if (served.Text is null)
            {
                // No tokenizer: stream the ids.
                foreach (GeneratedToken token in served.Engine.StreamAsync(request).ToBlockingEnumerable())
                {
                    context.Output.Write(token.Index == 0 ? $"{token.Id}" : $",{token.Id}");
                    context.Output.Flush();
                }

                context.Output.WriteLine();
                return 0;
            }

            var options = new TextGenerationOptions { Sampling = sampling, MaxTokens = request.MaxTokens, Adapter = served.Adapter };
            foreach (TextDelta delta in served.Text.StreamAsync(promptIds, options).ToBlockingEnumerable())
            {
                context.Output.Write(delta.Text);
                context.Output.Flush();
            }

            context.Output.WriteLine();
            return 0;
        });
        return command;
    }
}
