using System.Buffers;
using System.Text.Json;
using QLoRA.Text.Templates;

namespace QLoRA.Text.Data;

/// <summary>What to do with a line that is not a valid record.</summary>
public enum BadLinePolicy
{
    /// <summary>Stop with a <see cref="DatasetFormatException"/> naming the file and line.</summary>
    Throw,
    /// <summary>Skip it and count it (<see cref="JsonlReadResult.Skipped"/>).</summary>
    Skip,
}

/// <summary>Records read from a JSONL file, and the lines skipped with why.</summary>
public sealed record JsonlReadResult(IReadOnlyList<DatasetRecord> Records, IReadOnlyList<(int Line, string Problem)> Skipped);

/// <summary>Reads TRL-style JSONL training data: one JSON object a line; blank lines are ignored.</summary>
public static class JsonlReader
{
    /// <summary>Reads <paramref name="path"/>.</summary>
    /// <exception cref="DatasetFormatException">A bad line, with <see cref="BadLinePolicy.Throw"/>.</exception>
    public static JsonlReadResult Read(string path, BadLinePolicy policy = BadLinePolicy.Throw)
    {
        var records = new List<DatasetRecord>();
        var skipped = new List<(int, string)>();
        int line = 0;
        foreach (var bytes in Lines(path))
        {
            line++;
            string text;
            try
            {
                text = StrictUtf8.GetString(bytes.Span);
            }
            catch (System.Text.DecoderFallbackException e)
            {
                throw new DatasetFormatException(path, line, "is not valid UTF-8", e);
            }
            if (line == 1 && text.StartsWith('\uFEFF')) text = text[1..];
            if (string.IsNullOrWhiteSpace(text)) continue;
            try
            {
                records.Add(ParseLine(text, line));
            }
            catch (RecordException e)
            {
                if (policy == BadLinePolicy.Throw) throw new DatasetFormatException(path, line, e.Message);
                skipped.Add((line, e.Message));
            }
        }
        return new JsonlReadResult(records, skipped);
    }

    private static readonly System.Text.UTF8Encoding StrictUtf8 = new(false, true);

    /// <summary>The file's lines as raw bytes (without the '\n' and a trailing '\r'), so a bad byte is reported on its own line.</summary>
    private static IEnumerable<ReadOnlyMemory<byte>> Lines(string path)
    {
        using var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16);
        var line = new ArrayBufferWriter<byte>(4096);
        var buffer = new byte[1 << 16];
        int n;
        while ((n = stream.Read(buffer, 0, buffer.Length)) > 0)
        {
            int start = 0;
            for (int i = 0; i < n; i++)
            {
                if (buffer[i] != (byte)'\n') continue;
                line.Write(buffer.AsSpan(start, i - start));
                yield return Trim(line.WrittenMemory);
                line.Clear();
                start = i + 1;
            }
            line.Write(buffer.AsSpan(start, n - start));
        }
        if (line.WrittenCount > 0) yield return Trim(line.WrittenMemory);

        static ReadOnlyMemory<byte> Trim(ReadOnlyMemory<byte> m) => m.Length > 0 && m.Span[^1] == (byte)'\r' ? m[..^1] : m;
    }

    private sealed class RecordException(string message) : Exception(message);

    /// <summary>Parses one line (exposed for tests and in-memory data).</summary>
    internal static DatasetRecord ParseLine(string text, int line)
    {
        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(text);
        }
        catch (JsonException e)
        {
            throw new RecordException($"is not valid JSON ({e.Message})");
        }
        using (doc)
        {
            var root = doc.RootElement;
            if (root.ValueKind != JsonValueKind.Object) throw new RecordException($"must be a JSON object, not {root.ValueKind}");
            bool hasMessages = root.TryGetProperty("messages", out var messages);
            bool hasPrompt = root.TryGetProperty("prompt", out var prompt);
            bool hasCompletion = root.TryGetProperty("completion", out var completion);
            bool hasText = root.TryGetProperty("text", out var textValue);
            int shapes = (hasMessages ? 1 : 0) + (hasPrompt || hasCompletion ? 1 : 0) + (hasText ? 1 : 0);
            if (shapes == 0) throw new RecordException("has none of \"text\", \"prompt\"/\"completion\" or \"messages\"");
            if (shapes > 1) throw new RecordException("mixes \"text\", \"prompt\"/\"completion\" and \"messages\"; use one");
            if (hasText)
                return new DatasetRecord(RecordKind.Text, line) { Text = String(textValue, "text") };
            if (hasMessages)
            {
                var list = Messages(messages, "messages");
                if (!list.Any(m => m.Role == "assistant")) throw new RecordException("\"messages\" has no assistant turn to train on");
                return new DatasetRecord(RecordKind.Messages, line) { Messages = list };
            }
            if (!hasPrompt || !hasCompletion) throw new RecordException("needs both \"prompt\" and \"completion\"");
            if (prompt.ValueKind == JsonValueKind.String && completion.ValueKind == JsonValueKind.String)
                return new DatasetRecord(RecordKind.PromptCompletion, line) { Text = prompt.GetString(), Completion = completion.GetString() };
            if (prompt.ValueKind == JsonValueKind.Array && completion.ValueKind == JsonValueKind.Array)
                return new DatasetRecord(RecordKind.ConversationalPromptCompletion, line)
                {
                    Messages = Messages(prompt, "prompt"),
                    CompletionMessages = Messages(completion, "completion"),
                };
            throw new RecordException("\"prompt\" and \"completion\" must both be strings or both be message lists");
        }
    }

    private static string String(JsonElement e, string name) =>
        e.ValueKind == JsonValueKind.String ? e.GetString()! : throw new RecordException($"\"{name}\" must be a string, not {e.ValueKind}");

    private static List<ChatMessage> Messages(JsonElement e, string name)
    {
        if (e.ValueKind != JsonValueKind.Array) throw new RecordException($"\"{name}\" must be a list of messages");
        var list = new List<ChatMessage>();
        int i = 0;
        foreach (var m in e.EnumerateArray())
        {
            string where = $"\"{name}\"[{i++}]";
            if (m.ValueKind != JsonValueKind.Object) throw new RecordException($"{where} must be an object with \"role\" and \"content\"");
            if (!m.TryGetProperty("role", out var role) || role.ValueKind != JsonValueKind.String)
                throw new RecordException($"{where} has no string \"role\"");
            string? content = null;
            var extra = new Dictionary<string, JsonElement>();
            foreach (var p in m.EnumerateObject())
            {
                if (p.Name == "role") continue;
                if (p.Name == "content" && p.Value.ValueKind == JsonValueKind.String) content = p.Value.GetString();
                else extra[p.Name] = p.Value.Clone();   // content parts, tool_calls, reasoning_content, …
            }
            list.Add(new ChatMessage(role.GetString()!, content) { Extra = extra.Count > 0 ? extra : null });
        }
        if (list.Count == 0) throw new RecordException($"\"{name}\" is empty");
        return list;
    }
}
