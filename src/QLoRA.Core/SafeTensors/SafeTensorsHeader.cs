using System.Text;
using System.Text.Json;

namespace QLoRA.Core.SafeTensors;

/// <summary>
/// Parses and validates a safetensors JSON header against the size of the data buffer, in one streaming pass
/// (<see cref="Utf8JsonReader"/> over the mapped bytes, no document object model): a hostile header the format allows
/// (100 MB listing a million empty tensors) costs what its entries cost and no more.
/// </summary>
internal static class SafeTensorsHeader
{
    /// <summary>Largest header accepted, as the reference implementation (100 MB).</summary>
    public const long MaxHeaderBytes = 100_000_000;

    public const string MetadataKey = "__metadata__";

    private static readonly long[] Scalar = [];

    public static (List<SafeTensorInfo> Tensors, Dictionary<string, SafeTensorInfo> ByName, Dictionary<string, string> Metadata) Parse(
        string path, ReadOnlySpan<byte> header, long bufferLength)
    {
        if (!System.Text.Unicode.Utf8.IsValid(header))
        {
            throw new SafeTensorsFormatException(path, null, "the header is not valid JSON (invalid UTF-8)");
        }

        // The smallest entry ("a":{"dtype":"U8","shape":[0],"data_offsets":[0,0]}) is ~50 bytes: sizing for that many
        // up front costs at most ~0.6× the header and spares the rehashing of a growing table.
        int estimate = header.Length / 50;
        var tensors = new List<SafeTensorInfo>(estimate);
        var byName = new Dictionary<string, SafeTensorInfo>(estimate, StringComparer.Ordinal);
        var scratch = new List<long>(8);
        var metadata = new Dictionary<string, string>(StringComparer.Ordinal);
        var reader = new Utf8JsonReader(header, new JsonReaderOptions { MaxDepth = 8 });
        string? current = null;
        try
        {
            Next(ref reader);
            if (reader.TokenType != JsonTokenType.StartObject)
            {
                throw new SafeTensorsFormatException(path, null, $"the header must be a JSON object, not {Kind(reader.TokenType)}");
            }

            bool sawMetadata = false;
            while (true)
            {
                Next(ref reader);
                if (reader.TokenType == JsonTokenType.EndObject)
                {
                    break;
                }

                string name = reader.GetString()!;
                current = name;
                Next(ref reader);
                if (name == MetadataKey)
                {
                    if (sawMetadata)
                    {
                        throw new SafeTensorsFormatException(path, name, "the name appears more than once in the header");
                    }

                    sawMetadata = true;
                    ReadMetadata(path, ref reader, metadata);
                    continue;
                }

                SafeTensorInfo info = ReadTensor(path, name, ref reader, scratch);
                if (!byName.TryAdd(name, info))
                {
                    throw new SafeTensorsFormatException(path, name, "the name appears more than once in the header");
                }

                tensors.Add(info);
            }

            current = null;
            if (reader.Read())
            {
                throw new SafeTensorsFormatException(path, null, "the header holds data after its JSON object");
            }
        }
        catch (JsonException e)
        {
            throw new SafeTensorsFormatException(path, current, $"the header is not valid JSON ({e.Message})", e);
        }

        CheckLayout(path, tensors, bufferLength);
        return (tensors, byName, metadata);
    }

    private static void Next(ref Utf8JsonReader reader)
    {
        if (!reader.Read())
        {
            throw new JsonException("the header ends early");
        }
    }

    private static string Kind(JsonTokenType t) => t switch
    {
        JsonTokenType.StartArray => "Array",
        JsonTokenType.String => "String",
        JsonTokenType.Number => "Number",
        JsonTokenType.True or JsonTokenType.False => "Boolean",
        JsonTokenType.Null => "Null",
        JsonTokenType.StartObject => "Object",
        _ => t.ToString(),
    };

    private static void ReadMetadata(string path, ref Utf8JsonReader reader, Dictionary<string, string> metadata)
    {
        if (reader.TokenType != JsonTokenType.StartObject)
        {
            throw new SafeTensorsFormatException(path, MetadataKey, "must be an object of string values");
        }

        while (true)
        {
            Next(ref reader);
            if (reader.TokenType == JsonTokenType.EndObject)
            {
                return;
            }

            string key = reader.GetString()!;
            Next(ref reader);
            if (reader.TokenType != JsonTokenType.String)
            {
                throw new SafeTensorsFormatException(path, MetadataKey, $"value of '{key}' must be a string, not {Kind(reader.TokenType)}");
            }

            if (!metadata.TryAdd(key, reader.GetString()!))
            {
                throw new SafeTensorsFormatException(path, MetadataKey, $"key '{key}' appears more than once");
            }
        }
    }

    private static SafeTensorInfo ReadTensor(string path, string name, ref Utf8JsonReader reader, List<long> scratch)
    {
        if (reader.TokenType != JsonTokenType.StartObject)
        {
            throw new SafeTensorsFormatException(path, name, $"entry must be an object with dtype, shape and data_offsets, not {Kind(reader.TokenType)}");
        }

        // Keys and dtype names are compared on the UTF-8 bytes: no strings for what every entry repeats.
        DType? dtype = null;
        List<long>? shape = null;
        long begin = -1, end = -1;
        bool offsetsSeen = false;
        while (true)
        {
            Next(ref reader);
            if (reader.TokenType == JsonTokenType.EndObject)
            {
                break;
            }

            if (reader.ValueTextEquals("dtype"u8))
            {
                Next(ref reader);
                if (dtype is not null)
                {
                    throw Twice(path, name, "dtype");
                }

                if (reader.TokenType != JsonTokenType.String)
                {
                    throw new SafeTensorsFormatException(path, name, "missing string field 'dtype'");
                }

                dtype = ParseDtype(path, name, ref reader);
            }
            else if (reader.ValueTextEquals("shape"u8))
            {
                Next(ref reader);
                if (shape is not null)
                {
                    throw Twice(path, name, "shape");
                }

                scratch.Clear();
                shape = ReadShape(path, name, ref reader, scratch);
            }
            else if (reader.ValueTextEquals("data_offsets"u8))
            {
                Next(ref reader);
                if (offsetsSeen)
                {
                    throw Twice(path, name, "data_offsets");
                }

                offsetsSeen = true;
                (begin, end) = ReadOffsets(path, name, ref reader);
            }
            else
            {
                Next(ref reader);
                reader.Skip();   // safetensors ignores fields it does not know
            }
        }

        if (dtype is null)
        {
            throw new SafeTensorsFormatException(path, name, "missing string field 'dtype'");
        }

        if (shape is null)
        {
            throw new SafeTensorsFormatException(path, name, "missing array field 'shape'");
        }

        if (!offsetsSeen)
        {
            throw new SafeTensorsFormatException(path, name, "missing field 'data_offsets' of two integers");
        }

        if (end < begin)
        {
            throw new SafeTensorsFormatException(path, name, $"data_offsets [{begin}, {end}] end before they begin");
        }

        long expected = dtype.Value.SizeInBytes();
        foreach (long d in shape)
        {
            if (d != 0 && expected > long.MaxValue / d)
            {
                throw new SafeTensorsFormatException(path, name, $"shape [{string.Join(", ", shape)}] is too large");
            }

            expected *= d;
        }

        if (end - begin != expected)
        {
            throw new SafeTensorsFormatException(path, name, $"shape [{string.Join(", ", shape)}] of {dtype.Value.SafeTensorsName()} needs {expected} bytes but data_offsets [{begin}, {end}] hold {end - begin}");
        }

        return new SafeTensorInfo(name, dtype.Value, shape.Count == 0 ? Scalar : shape.ToArray(), begin, end);
    }

    private static readonly (byte[] Name, DType Dtype)[] DtypeNames =
        [.. new[] { "BOOL", "U8", "I8", "I16", "I32", "I64", "F16", "BF16", "F32", "F64" }
            .Select(n => (Encoding.UTF8.GetBytes(n), DTypeInfo.TryParseSafeTensorsName(n, out DType d) ? d : throw new InvalidOperationException(n)))];

    private static DType ParseDtype(string path, string name, ref Utf8JsonReader reader)
    {
        foreach (var (bytes, dtype) in DtypeNames)
        {
            if (reader.ValueTextEquals(bytes))
            {
                return dtype;
            }
        }

        throw new SafeTensorsFormatException(path, name, $"unsupported dtype '{reader.GetString()}' (supported: F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL)");
    }

    private static SafeTensorsFormatException Twice(string path, string name, string key) =>
        new(path, name, $"key '{key}' appears twice in the entry");

    private static List<long> ReadShape(string path, string name, ref Utf8JsonReader reader, List<long> shape)
    {
        if (reader.TokenType != JsonTokenType.StartArray)
        {
            throw new SafeTensorsFormatException(path, name, "missing array field 'shape'");
        }

        while (true)
        {
            Next(ref reader);
            if (reader.TokenType == JsonTokenType.EndArray)
            {
                return shape;
            }

            if (reader.TokenType != JsonTokenType.Number || !reader.TryGetInt64(out long dim) || dim < 0)
            {
                throw new SafeTensorsFormatException(path, name, $"shape entries must be non-negative integers, got {Raw(ref reader)}");
            }

            shape.Add(dim);
        }
    }

    private static (long Begin, long End) ReadOffsets(string path, string name, ref Utf8JsonReader reader)
    {
        if (reader.TokenType != JsonTokenType.StartArray)
        {
            throw new SafeTensorsFormatException(path, name, "missing field 'data_offsets' of two integers");
        }

        Span<long> values = stackalloc long[2];
        int count = 0;
        while (true)
        {
            Next(ref reader);
            if (reader.TokenType == JsonTokenType.EndArray)
            {
                break;
            }

            if (count == 2)
            {
                throw new SafeTensorsFormatException(path, name, "missing field 'data_offsets' of two integers");
            }

            if (reader.TokenType != JsonTokenType.Number || !reader.TryGetInt64(out long offset) || offset < 0)
            {
                throw new SafeTensorsFormatException(path, name, $"data_offsets must be non-negative integers, got {Raw(ref reader)}");
            }

            values[count++] = offset;
        }

        if (count != 2)
        {
            throw new SafeTensorsFormatException(path, name, "missing field 'data_offsets' of two integers");
        }

        return (values[0], values[1]);
    }

    private static string Raw(ref Utf8JsonReader reader)
    {
        if (reader.TokenType is JsonTokenType.StartArray or JsonTokenType.StartObject)
        {
            return Kind(reader.TokenType);
        }

        string text = Encoding.UTF8.GetString(reader.HasValueSequence ? System.Buffers.BuffersExtensions.ToArray(reader.ValueSequence) : reader.ValueSpan);
        return reader.TokenType == JsonTokenType.String ? $"\"{text}\"" : text;
    }

    // The buffer must be covered exactly: tensors in offset order, each starting where the previous ended,
    // the first at 0 and the last ending at the end of the file.
    private static void CheckLayout(string path, List<SafeTensorInfo> tensors, long bufferLength)
    {
        var ordered = tensors.ToArray();
        // Stable order by (begin, end), then declaration order, without LINQ's per-key allocations; writers usually
        // declare tensors in offset order, and then no sort is needed.
        var index = new int[ordered.Length];
        bool inOrder = true;
        for (int i = 0; i < index.Length; i++)
        {
            index[i] = i;
            if (i > 0 && (ordered[i].Begin < ordered[i - 1].Begin || (ordered[i].Begin == ordered[i - 1].Begin && ordered[i].End < ordered[i - 1].End)))
            {
                inOrder = false;
            }
        }

        if (!inOrder)
        {
            SortByOffsets(ordered, index);
        }

        CheckCoverage(path, ordered, index, bufferLength);
    }

    private static void SortByOffsets(SafeTensorInfo[] ordered, int[] index) =>
        Array.Sort(index, (a, b) =>
        {
            int c = ordered[a].Begin.CompareTo(ordered[b].Begin);
            if (c == 0)
            {
                c = ordered[a].End.CompareTo(ordered[b].End);
            }

            return c != 0 ? c : a.CompareTo(b);
        });

    private static void CheckCoverage(string path, SafeTensorInfo[] ordered, int[] index, long bufferLength)
    {
        long position = 0;
        SafeTensorInfo? previous = null;
        foreach (int i in index)
        {
            SafeTensorInfo t = ordered[i];
            if (t.End > bufferLength)
            {
                throw new SafeTensorsFormatException(path, t.Name, $"data_offsets [{t.Begin}, {t.End}] reach past the end of the data ({bufferLength} bytes)");
            }

            if (t.Begin < position)
            {
                throw new SafeTensorsFormatException(path, t.Name, $"data_offsets [{t.Begin}, {t.End}] overlap tensor '{previous!.Name}' [{previous.Begin}, {previous.End}]");
            }

            if (t.Begin > position)
            {
                throw new SafeTensorsFormatException(path, t.Name, $"data_offsets [{t.Begin}, {t.End}] leave a gap of {t.Begin - position} unclaimed bytes before it");
            }

            position = t.End;
            previous = t;
        }

        if (position != bufferLength)
        {
            throw new SafeTensorsFormatException(path, null, $"{bufferLength - position} trailing bytes after the last tensor are claimed by no tensor");
        }
    }
}
