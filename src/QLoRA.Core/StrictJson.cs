using System.Text.Json;
using System.Text.Json.Nodes;

namespace QLoRA.Core;

/// <summary>
/// Parses a JSON object for the readers, turning every way the text can be malformed into the reader's own typed
/// error: invalid JSON, a non-object root, and a key repeated in an object (which <see cref="JsonNode"/> reports lazily,
/// as an ArgumentException, when the object is first read).
/// </summary>
internal static class StrictJson
{
    public static JsonObject ParseObject(string text, Func<string, Exception?, Exception> fail) => Materialize(Parse(() => JsonNode.Parse(text), fail), fail);

    public static JsonObject ParseObject(byte[] utf8, Func<string, Exception?, Exception> fail) => Materialize(Parse(() => JsonNode.Parse(utf8), fail), fail);

    private static JsonNode? Parse(Func<JsonNode?> parse, Func<string, Exception?, Exception> fail)
    {
        try
        {
            return parse();
        }
        catch (JsonException e)
        {
            throw fail($"not valid JSON ({e.Message})", e);
        }
    }

    private static JsonObject Materialize(JsonNode? node, Func<string, Exception?, Exception> fail)
    {
        if (node is not JsonObject root)
        {
            throw fail($"must be a JSON object, not {(node is null ? "null" : node.GetValueKind().ToString())}", null);
        }

        try
        {
            Walk(root);
        }
        catch (ArgumentException e)
        {
            throw fail($"repeats a key in an object ({e.Message})", e);
        }

        return root;
    }

    private static void Walk(JsonNode node)
    {
        switch (node)
        {
            case JsonObject o:
                foreach (var (_, v) in o)
                {
                    if (v is not null) Walk(v);
                }

                break;
            case JsonArray a:
                foreach (var v in a)
                {
                    if (v is not null) Walk(v);
                }

                break;
        }
    }

    /// <summary>An int field, or null when absent; a present value that is not an int fails.</summary>
    public static int? OptInt(JsonObject root, string name, Func<string, Exception> fail) => root[name] switch
    {
        null => null,
        JsonValue v when v.GetValueKind() == JsonValueKind.Number && v.TryGetValue(out int i) => i,
        JsonValue v when v.GetValueKind() == JsonValueKind.Number && v.TryGetValue(out double d) && d == Math.Floor(d) && d is >= int.MinValue and <= int.MaxValue => (int)d,
        var other => throw fail($"must be an integer, not {other.ToJsonString()}"),
    };
}
