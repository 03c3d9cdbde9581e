using System.Text.RegularExpressions;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace QLoRA.Core.Peft;

/// <summary>Typed field access over the config JSON, failing with the field named.</summary>
public sealed partial class LoraConfig
{
    private sealed class ConfigFields(JsonObject root, string path)
    {
        public void Reject(string field, string problem) => throw new PeftAdapterException(path, field, problem);

        public T Reject<T>(string field, string problem) => throw new PeftAdapterException(path, field, problem);

        public string? String(string name) => root[name] switch
        {
            null => null,
            JsonValue v when v.TryGetValue(out string? s) => s,
            var other => Reject<string>(name, $"must be a string, got {other.ToJsonString()}"),
        };

        public bool? Bool(string name) => root[name] switch
        {
            null => null,
            JsonValue v when v.TryGetValue(out bool b) => b,
            var other => Reject<bool?>(name, $"must be true or false, got {other.ToJsonString()}"),
        };

        public double? Number(string name) => root[name] switch
        {
            null => null,
            JsonValue v when v.GetValueKind() == JsonValueKind.Number && double.IsFinite(v.GetValue<double>()) => v.GetValue<double>(),
            var other => Reject<double?>(name, $"must be a number, got {other.ToJsonString()}"),
        };

        public int? PositiveInt(string name)
        {
            double? d = Number(name);
            return d switch
            {
                null => null,
                >= 1 and <= int.MaxValue when d == Math.Floor(d.Value) => (int)d.Value,
                _ => Reject<int?>(name, $"must be a positive integer, got {d}"),
            };
        }

        public IReadOnlyList<string>? StringList(string name) => root[name] switch
        {
            null => null,
            JsonArray a => [.. a.Select(n => n is JsonValue v && v.TryGetValue(out string? s) ? s : Reject<string>(name, $"entries must be strings, got {n?.ToJsonString() ?? "null"}"))],
            var other => Reject<IReadOnlyList<string>>(name, $"must be a list of strings, got {other.ToJsonString()}"),
        };

        public (IReadOnlyList<string>? List, string? Regex) ListOrRegex(string name)
        {
            if (root[name] is JsonValue v && v.TryGetValue(out string? regex))
            {
                try
                {
                    _ = new Regex(regex);
                }
                catch (ArgumentException e)
                {
                    Reject(name, $"'{regex}' is not a valid regular expression ({e.Message})");
                }

                return (null, regex);
            }

            return (StringList(name), null);
        }

        public IReadOnlyList<int>? IntList(string name) => root[name] switch
        {
            null => null,
            JsonValue v when v.TryGetValue(out int i) => [i],
            JsonArray a => [.. a.Select(n => n is JsonValue v && v.TryGetValue(out int i) && i >= 0 ? i : Reject<int>(name, $"entries must be non-negative layer indices, got {n?.ToJsonString() ?? "null"}"))],
            var other => Reject<IReadOnlyList<int>>(name, $"must be a layer index or a list of them, got {other.ToJsonString()}"),
        };

        public IReadOnlyList<KeyValuePair<string, T>> Pattern<T>(string name, Func<JsonNode?, T?> parse)
            where T : struct
        {
            if (root[name] is null)
            {
                return [];
            }

            if (root[name] is not JsonObject obj)
            {
                return Reject<IReadOnlyList<KeyValuePair<string, T>>>(name, "must be an object of module pattern → value");
            }

            var result = new List<KeyValuePair<string, T>>();
            foreach (KeyValuePair<string, JsonNode?> entry in obj)
            {
                T value = parse(entry.Value) ?? Reject<T>(name, $"value for '{entry.Key}' is invalid: {entry.Value?.ToJsonString() ?? "null"}");
                result.Add(new KeyValuePair<string, T>(entry.Key, value));
            }

            return result;
        }
    }
}
