using System.Text.Json;
using System.Text.Json.Nodes;
using QLoRA.Text.Templates;

namespace QLoRA.Text.Tests;

/// <summary>Rendered chat templates against Python's jinja2 with transformers' settings.</summary>
public sealed class ChatTemplateReferenceTests(ITestOutputHelper output)
{
    private static readonly DateTime FixedNow = new(2026, 12, 1, 17, 5, 0);

    public static TheoryData<string> RealTemplates => new("llama3", "llama3_1", "qwen3", "gemma3", "deepseek_v3");

    public static TheoryData<string> Features => new(FeatureTemplates.All.Select(f => f.Name));

    [Theory]
    [MemberData(nameof(RealTemplates))]
    public void Real_checkpoint_templates_render_as_jinja2(string model)
    {
        var tok = TokenizerFiles.Ours(model);
        string template = tok.Config.ChatTemplate ?? throw new InvalidOperationException($"{model} has no chat template");
        CompareWithJinja2(model, template, tok.Config.SpecialTokenVariables);
    }

    [Theory]
    [MemberData(nameof(Features))]
    public void Feature_templates_render_as_jinja2(string name)
    {
        string template = FeatureTemplates.All.Single(f => f.Name == name).Source;
        CompareWithJinja2(name, template, new Dictionary<string, string> { ["bos_token"] = "<s>", ["eos_token"] = "</s>" });
    }

    private void CompareWithJinja2(string name, string template, IReadOnlyDictionary<string, string> specials)
    {
        var parsed = ChatTemplate.Parse(template, name);
        var cases = new JsonArray();
        var ours = new List<(string? Text, Exception? Error)>();
        foreach (var conversation in Conversations.All())
        foreach (bool agp in new[] { false, true })
        foreach (bool withTools in new[] { false, true })
        {
            if (withTools && agp) continue;
            var variables = new JsonObject();
            foreach (var (k, v) in specials) variables[k] = v;
            if (withTools) variables["tools"] = Conversations.Tools();
            cases.Add(new JsonObject
            {
                ["template"] = template,
                ["messages"] = conversation.DeepClone(),
                ["add_generation_prompt"] = agp,
                ["variables"] = variables,
                ["now"] = new JsonArray(2026, 12, 1, 17, 5, 0),
            });
            try
            {
                ours.Add((parsed.Render(new ChatTemplateInputs
                {
                    Messages = Conversations.ToMessages(conversation),
                    AddGenerationPrompt = agp,
                    SpecialTokens = specials,
                    Tools = withTools ? JsonSerializer.SerializeToElement(Conversations.Tools()) : null,
                    Now = () => FixedNow,
                }), null));
            }
            catch (TemplateException e)
            {
                ours.Add((null, e));
            }
        }
        var expected = JinjaReference.Render(cases);
        int mismatches = 0, rendered = 0, raised = 0;
        var report = new List<string>();
        for (int i = 0; i < expected.Count; i++)
        {
            var (text, error) = ours[i];
            var want = expected[i];
            bool same;
            if (want.Error is not null)
            {
                raised++;
                // A template's own raise_exception must surface with its message.
                same = error is TemplateRaisedException r && r.TemplateMessage == want.Message
                       || (want.Error != "TemplateError" && error is TemplateRuntimeException);
            }
            else
            {
                rendered++;
                same = error is null && text == want.Text;
            }
            if (same) continue;
            mismatches++;
            if (report.Count < 3)
                report.Add($"case {i} ({cases[i]!["messages"]!.ToJsonString()[..Math.Min(120, cases[i]!["messages"]!.ToJsonString().Length)]}, agp {cases[i]!["add_generation_prompt"]}):\n" +
                           $"jinja2: {(want.Error is not null ? want.Error + ": " + want.Message : JsonSerializer.Serialize(want.Text))}\n" +
                           $"ours:   {(error is not null ? error.GetType().Name + ": " + error.Message : JsonSerializer.Serialize(text))}");
        }
        output.WriteLine($"{name}: {expected.Count} renders ({rendered} texts, {raised} raised), {mismatches} mismatches");
        Assert.True(expected.Count >= 30);
        Assert.True(mismatches == 0, string.Join("\n\n", report));
    }
}
