using System.CommandLine;
using System.Text;
using QLoRA.Runtime.Generation;
using TemplateMessage = QLoRA.Text.Templates.ChatMessage;

namespace QLoRA.Cli;

/// <summary>
/// <c>qlora chat --model M [--adapter A]</c>: an interactive conversation with the model's chat template, answers
/// streamed as they are generated; <c>/reset</c> starts over, <c>/exit</c> (or end of input) quits.
/// </summary>
internal static class ChatCommand
{
    public static Command Create(CommandContext context)
    {
        var model = ServingModel.ModelOption();
        var adapter = ServingModel.AdapterOption();
        var system = new Option<string?>("--system") { Description = "A system message that opens the conversation" };
        var maxTokens = new Option<int>("--max-tokens") { Description = "Most tokens per answer", DefaultValueFactory = _ => 512 };
        var temperature = new Option<double>("--temperature") { Description = "Sampling temperature; 0 is greedy", DefaultValueFactory = _ => 0.7 };
        var topP = new Option<double>("--top-p") { Description = "Nucleus sampling mass", DefaultValueFactory = _ => 0.9 };
        var seed = new Option<ulong?>("--seed") { Description = "Seed of the draws" };
        var quantize = ServingModel.QuantizeOption();
        var command = new Command("chat", "Chat with a model in the terminal (/reset, /exit)") { model, adapter, system, maxTokens, temperature, topP, seed, quantize };
        command.SetAction(parsed =>
        {
            using ServingModel served = ServingModel.Load(parsed.GetValue(model)!, parsed.GetValue(adapter), parsed.GetValue(quantize)!);
            TextGenerator generator = served.Text ?? throw new CliException($"{served.Folder} has no tokenizer.json; chat needs the model's tokenizer and chat template");
            if (!generator.HasChatTemplate)
            {
                throw new CliException($"{served.Folder} has no chat template (tokenizer_config.json's chat_template or chat_template.jinja)");
            }

            var sampling = new SamplingOptions { Temperature = parsed.GetValue(temperature), TopP = parsed.GetValue(topP), Seed = parsed.GetValue(seed) };
            sampling.Validate(served.Engine.Model.Config.VocabSize);
            var options = new TextGenerationOptions { Sampling = sampling, MaxTokens = parsed.GetValue(maxTokens), Adapter = served.Adapter };
            var history = new List<TemplateMessage>();
            void Reset()
            {
                history.Clear();
                if (parsed.GetValue(system) is string s)
                {
                    history.Add(new TemplateMessage("system", s));
                }
            }

            Reset();
            TextWriter w = context.Output;
            w.WriteLine($"Chatting with {served.Folder}{(served.Adapter is null ? "" : " + adapter")} on {served.Device.Description}. /reset starts over, /exit quits.");
            while (true)
            {
                w.Write("> ");
                w.Flush();
                string? line = context.Input.ReadLine();
                if (line is null || line.Trim() == "/exit")
                {
                    break;
                }

                if (line.Trim() == "/reset")
                {
                    Reset();
                    w.WriteLine("(conversation reset)");
                    continue;
                }

                if (line.Trim().Length == 0)
                {
                    continue;
                }

                history.Add(new TemplateMessage("user", line));
                var answer = new StringBuilder();
                foreach (TextDelta delta in generator.StreamAsync(generator.EncodeChat(history), options).ToBlockingEnumerable())
                {
                    answer.Append(delta.Text);
                    w.Write(delta.Text);
                    w.Flush();
                }

                w.WriteLine();
                history.Add(new TemplateMessage("assistant", answer.ToString()));
            }

            return 0;
        });
        return command;
    }
}
