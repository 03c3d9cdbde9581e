using System.Text.Json;

namespace QLoRA.Text;

/// <summary>Reads JSON files with errors that name the file and the field.</summary>
internal static class JsonFile
{
    public static JsonDocument Parse(string path)
    {
        byte[] bytes;
        try
        {
            bytes = File.ReadAllBytes(path);
        }
        catch (IOException e)
        {
            throw new TextFormatException(path, null, $"cannot be read: {e.Message}", e);
        }
        return Parse(bytes, path);
    }

    public static JsonDocument Parse(ReadOnlyMemory<byte> bytes, string path)
    {
        try
        {
            return JsonDocument.Parse(bytes, new JsonDocumentOptions { MaxDepth = 256, AllowTrailingCommas = false });
        }
        catch (JsonException e)
        {
            throw new TextFormatException(path, null, $"is not valid JSON ({e.Message})", e);
        }
    }

    public static string? OptString(this JsonElement e, string name, string path, string where)
    {
        if (e.ValueKind != JsonValueKind.Object || !e.TryGetProperty(name, out var v) || v.ValueKind == JsonValueKind.Null) return null;
        return v.ValueKind == JsonValueKind.String ? v.GetString()
            : throw new TextFormatException(path, $"{where}.{name}", $"must be a string, not {v.ValueKind}");
    }

    public static string ReqString(this JsonElement e, string name, string path, string where) =>
        e.OptString(name, path, where) ?? throw new TextFormatException(path, $"{where}.{name}", "is missing");

    public static bool OptBool(this JsonElement e, string name, bool fallback, string path, string where)
    {
        if (e.ValueKind != JsonValueKind.Object || !e.TryGetProperty(name, out var v) || v.ValueKind == JsonValueKind.Null) return fallback;
        return v.ValueKind switch
        {
            JsonValueKind.True => true,
            JsonValueKind.False => false,
            _ => throw new TextFormatException(path, $"{where}.{name}", $"must be true or false, not {v.ValueKind}"),
        };
    }

    public static int? OptInt(this JsonElement e, string name, string path, string where)
    {
        if (e.ValueKind != JsonValueKind.Object || !e.TryGetProperty(name, out var v) || v.ValueKind == JsonValueKind.Null) return null;
        return v.ValueKind == JsonValueKind.Number && v.TryGetInt32(out int i) ? i
            : throw new TextFormatException(path, $"{where}.{name}", $"must be an integer, not {v.GetRawText()}");
    }

    public static double? OptDouble(this JsonElement e, string name, string path, string where)
    {
        if (e.ValueKind != JsonValueKind.Object || !e.TryGetProperty(name, out var v) || v.ValueKind == JsonValueKind.Null) return null;
        return v.ValueKind == JsonValueKind.Number ? v.GetDouble()
            : throw new TextFormatException(path, $"{where}.{name}", $"must be a number, not {v.GetRawText()}");
    }

    public static JsonElement? OptElement(this JsonElement e, string name)
    {
        if (e.ValueKind != JsonValueKind.Object || !e.TryGetProperty(name, out var v) || v.ValueKind == JsonValueKind.Null) return null;
        return v;
    }
}
