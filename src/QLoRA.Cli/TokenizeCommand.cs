using System.CommandLine;
using System.Text.Json;
using System.Text.Json.Nodes;
using QLoRA.Core.HuggingFace;
using QLoRA.Text;
using QLoRA.Text.Templates;
using QLoRA.Text.Tokenization;

namespace QLoRA.Cli;

/// <summary>
/// <c>qlora tokenize --model M (--text T | --file F | --chat-json FILE [--add-generation-prompt]) [--json]</c>: token ids
/// of a text, or of a conversation rendered with the checkpoint's chat template (encoded without adding special tokens,
/// as transformers' apply_chat_template does); <c>--json</c> prints <c>{"text": ..., "ids": [...]}</c>.
/// </summary>
internal static class TokenizeCommand
{
    public static Command Create(CommandContext context)
    {
        var model = new Option<string>("--model") { Description = "The model: a folder, or an id in the local Hugging Face cache", Required = true };
        var text = new Option<string?>("--text") { Description = "Text to tokenize" };
        var file = new Option<string?>("--file") { Description = "A text file to tokenize" };
        var chatJson = new Option<string?>("--chat-json") { Description = "A JSON file {\"messages\": [{\"role\", \"content\"}, …]} rendered with the chat template" };
        var generationPrompt = new Option<bool>("--add-generation-prompt") { Description = "End the rendered conversation with the assistant's turn opening" };
        var json = new Option<bool>("--json") { Description = "Print {\"text\", \"ids\"}" };
        var command = new Command("tokenize", "Token ids of a text or a chat conversation") { model, text, file, chatJson, generationPrompt, json };
        command.SetAction(parsed =>
        {
            string?[] inputs = [parsed.GetValue(text), parsed.GetValue(file), parsed.GetValue(chatJson)];
            if (inputs.Count(i => i is not null) != 1)
            {
                throw new CliException("give exactly one of --text, --file and --chat-json");
            }

            var tokenizer = HfTokenizer.FromFolder(HubCache.ResolveOrDownload(parsed.GetValue(model)!));
            string rendered;
            int[] ids;
            if (parsed.GetValue(chatJson) is string chatPath)
            {
                JsonNode? root = JsonNode.Parse(File.ReadAllText(chatPath));
                if (root?["messages"] is not JsonArray messages)
                {
                    throw new CliException($"{chatPath}: expected an object with a \"messages\" array");
                }

                List<ChatMessage> turns = [.. messages.Select((m, i) => new ChatMessage(
                    m?["role"]?.GetValue<string>() ?? throw new CliException($"{chatPath}: message {i} has no role"), m?["content"]?.GetValue<string>()))];
                rendered = new ChatFormatter(tokenizer).Render(turns, parsed.GetValue(generationPrompt));
                ids = tokenizer.Encode(rendered, addSpecialTokens: false);
            }
            else
            {
                rendered = parsed.GetValue(text) ?? File.ReadAllText(parsed.GetValue(file)!);
                ids = tokenizer.Encode(rendered);
            }

            context.Output.WriteLine(parsed.GetValue(json)
                ? new JsonObject { ["text"] = rendered, ["ids"] = new JsonArray([.. ids.Select(i => (JsonNode?)i)]) }.ToJsonString(new JsonSerializerOptions { Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping })
                : string.Join(' ', ids));
            return 0;
        });
        return command;
    }
}
