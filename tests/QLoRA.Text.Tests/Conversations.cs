using System.Text.Json;
using System.Text.Json.Nodes;
using QLoRA.Text.Templates;

namespace QLoRA.Text.Tests;

/// <summary>Conversations the chat templates are rendered with: system or not, one or many turns, empty content, unicode, tools.</summary>
internal static class Conversations
{
    private static JsonObject Msg(string role, string content) => new() { ["role"] = role, ["content"] = content };

    public static List<JsonArray> All()
    {
        var list = new List<JsonArray>
        {
            new() { Msg("user", "Hello!") },
            new() { Msg("system", "You are a helpful assistant."), Msg("user", "Hi there") },
            new() { Msg("user", "What is 2+2?"), Msg("assistant", "4") },
            new() { Msg("system", "Be brief."), Msg("user", "Name a color."), Msg("assistant", "Blue.") },
            new() { Msg("user", "a"), Msg("assistant", "b"), Msg("user", "c") },
            new() { Msg("user", "a"), Msg("assistant", "b"), Msg("user", "c"), Msg("assistant", "d") },
            new() { Msg("system", "S"), Msg("user", "a"), Msg("assistant", "b"), Msg("user", "c"), Msg("assistant", "d"), Msg("user", "e") },
            new() { Msg("user", "") },
            new() { Msg("user", "x"), Msg("assistant", "") },
            new() { Msg("system", ""), Msg("user", "y") },
            new() { Msg("user", "  padded  \n") },
            new() { Msg("user", "日本語で答えて"), Msg("assistant", "はい、わかりました。😀") },
            new() { Msg("user", "Ünïcödé «quotes» — and \"escapes\" \\ and 'single'") },
            new() { Msg("user", "line1\nline2\n\nline4"), Msg("assistant", "ok\n\n") },
            new() { Msg("user", "<|im_start|> and <s> and {{ not a tag }} {% nor this %}") },
            new() { Msg("system", "multi\nline\nsystem"), Msg("user", "q") },
            new() { Msg("user", "tabs\tand\ttabs"), Msg("assistant", "\tindented") },
            new() { Msg("user", new string('x', 2000)) },
            new() { Msg("user", "first"), Msg("user", "second") },
            new() { Msg("assistant", "I start.") },
            new() { Msg("system", "Only system") },
            new() { Msg("user", "Think about it."), Msg("assistant", "<think>\nreasoning here\n</think>\n\nThe answer.") },
            new() { Msg("user", "u1"), Msg("assistant", "<think>r1</think>a1"), Msg("user", "u2"), Msg("assistant", "a2") },
            new() { Msg("user", "🦙🧠 emoji only") },
            new() { Msg("user", "RTL: שלום עולם مرحبا") },
        };
        var withTool = new JsonArray
        {
            Msg("user", "What's the weather in Paris?"),
            new JsonObject
            {
                ["role"] = "assistant",
                ["tool_calls"] = new JsonArray(new JsonObject
                {
                    ["type"] = "function",
                    ["function"] = new JsonObject { ["name"] = "get_weather", ["arguments"] = new JsonObject { ["city"] = "Paris", ["unit"] = "c" } },
                }),
            },
            new JsonObject { ["role"] = "tool", ["content"] = "{\"temp\": 21.5}" },
            Msg("assistant", "It is 21.5 °C in Paris."),
        };
        list.Add(withTool);
        list.Add(new JsonArray { Msg("user", "ping"), new JsonObject { ["role"] = "tool", ["content"] = "pong" } });
        list.Add(new JsonArray { Msg("user", "numbers"), new JsonObject { ["role"] = "assistant", ["content"] = "1, 2, 3", ["reasoning_content"] = "count" } });
        list.Add(new JsonArray { Msg("system", "Sys"), Msg("user", "Q1"), Msg("assistant", "A1"), Msg("user", "Q2"), Msg("assistant", "A2"), Msg("user", "Q3"), Msg("assistant", "A3") });
        list.Add(new JsonArray { Msg("user", "What's 1/3 as float?"), Msg("assistant", "0.333…") });
        list.Add(new JsonArray { Msg("user", "end with space "), Msg("assistant", " start with space") });
        return list;
    }

    public static JsonNode Tools() => JsonNode.Parse("""
        [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}}, "required": ["city"]}}}]
        """)!;

    public static IReadOnlyList<ChatMessage> ToMessages(JsonArray conversation)
    {
        var result = new List<ChatMessage>();
        foreach (var node in conversation)
        {
            var obj = node!.AsObject();
            var element = JsonSerializer.SerializeToElement(obj);
            var extra = new Dictionary<string, JsonElement>();
            foreach (var p in element.EnumerateObject())
                if (p.Name is not ("role" or "content")) extra[p.Name] = p.Value.Clone();
            result.Add(new ChatMessage(obj["role"]!.GetValue<string>(), obj["content"]?.GetValue<string>()) { Extra = extra });
        }
        return result;
    }
}
