using System.Text.Json;

namespace QLoRA.Core.SafeTensors;

/// <summary>Parses and validates a safetensors JSON header against the size of the data buffer.</summary>
internal static class SafeTensorsHeader
{
    /// <summary>Largest header accepted, as the reference implementation (100 MB).</summary>
    public const long MaxHeaderBytes = 100_000_000;

    public const string MetadataKey = "__metadata__";

    public static (List<SafeTensorInfo> Tensors, Dictionary<string, string> Metadata) Parse(string path, ReadOnlySpan<byte> header, long bufferLength)
    {
        if (!System.Text.Unicode.Utf8.IsValid(header))
        {
            throw new SafeTensorsFormatException(path, null, "the header is not valid JSON (invalid UTF-8)");
        }

        JsonDocument document;
        try
        {
            // Copying the header (not the data) is fine: headers are small and bounded above.
            document = JsonDocument.Parse(header.ToArray(), new JsonDocumentOptions { MaxDepth = 8 });
        }
        catch (JsonException e)
        {
            throw new SafeTensorsFormatException(path, null, $"the header is not valid JSON ({e.Message})", e);
        }

        using (document)
        {
            if (document.RootElement.ValueKind != JsonValueKind.Object)
            {
                throw new SafeTensorsFormatException(path, null, $"the header must be a JSON object, not {document.RootElement.ValueKind}");
            }

            var tensors = new List<SafeTensorInfo>();
            var metadata = new Dictionary<string, string>(StringComparer.Ordinal);
            var seen = new HashSet<string>(StringComparer.Ordinal);
            foreach (JsonProperty property in document.RootElement.EnumerateObject())
            {
                if (!seen.Add(property.Name))
                {
                    throw new SafeTensorsFormatException(path, property.Name, "the name appears more than once in the header");
                }

                if (property.Name == MetadataKey)
                {
                    ReadMetadata(path, property.Value, metadata);
                }
                else
                {
                    tensors.Add(ReadTensor(path, property.Name, property.Value));
                }
            }

            CheckLayout(path, tensors, bufferLength);
            return (tensors, metadata);
        }
    }

    private static void ReadMetadata(string path, JsonElement value, Dictionary<string, string> metadata)
    {
        if (value.ValueKind != JsonValueKind.Object)
        {
            throw new SafeTensorsFormatException(path, MetadataKey, "must be an object of string values");
        }

        foreach (JsonProperty entry in value.EnumerateObject())
        {
            if (entry.Value.ValueKind != JsonValueKind.String)
            {
                throw new SafeTensorsFormatException(path, MetadataKey, $"value of '{entry.Name}' must be a string, not {entry.Value.ValueKind}");
            }

            if (!metadata.TryAdd(entry.Name, entry.Value.GetString()!))
            {
                throw new SafeTensorsFormatException(path, MetadataKey, $"key '{entry.Name}' appears more than once");
            }
        }
    }

    private static SafeTensorInfo ReadTensor(string path, string name, JsonElement value)
    {
        if (value.ValueKind != JsonValueKind.Object)
        {
            throw new SafeTensorsFormatException(path, name, $"entry must be an object with dtype, shape and data_offsets, not {value.ValueKind}");
        }

        // JsonDocument keeps the last of repeated keys; safetensors' own parser rejects them, and so do we.
        var keys = new HashSet<string>(StringComparer.Ordinal);
        foreach (JsonProperty property in value.EnumerateObject())
        {
            if (!keys.Add(property.Name))
            {
                throw new SafeTensorsFormatException(path, name, $"key '{property.Name}' appears twice in the entry");
            }
        }

        if (!value.TryGetProperty("dtype", out JsonElement dtypeElement) || dtypeElement.ValueKind != JsonValueKind.String)
        {
            throw new SafeTensorsFormatException(path, name, "missing string field 'dtype'");
        }

        string dtypeName = dtypeElement.GetString()!;
        if (!DTypeInfo.TryParseSafeTensorsName(dtypeName, out DType dtype))
        {
            throw new SafeTensorsFormatException(path, name, $"unsupported dtype '{dtypeName}' (supported: F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL)");
        }

        if (!value.TryGetProperty("shape", out JsonElement shapeElement) || shapeElement.ValueKind != JsonValueKind.Array)
        {
            throw new SafeTensorsFormatException(path, name, "missing array field 'shape'");
        }

        var shape = new List<long>(shapeElement.GetArrayLength());
        foreach (JsonElement d in shapeElement.EnumerateArray())
        {
            if (d.ValueKind != JsonValueKind.Number || !d.TryGetInt64(out long dim) || dim < 0)
            {
                throw new SafeTensorsFormatException(path, name, $"shape entries must be non-negative integers, got {d.GetRawText()}");
            }

            shape.Add(dim);
        }

        if (!value.TryGetProperty("data_offsets", out JsonElement offsets) || offsets.ValueKind != JsonValueKind.Array || offsets.GetArrayLength() != 2)
        {
            throw new SafeTensorsFormatException(path, name, "missing field 'data_offsets' of two integers");
        }

        long begin = ReadOffset(path, name, offsets[0]);
        long end = ReadOffset(path, name, offsets[1]);
        if (end < begin)
        {
            throw new SafeTensorsFormatException(path, name, $"data_offsets [{begin}, {end}] end before they begin");
        }

        long expected;
        try
        {
            expected = dtype.SizeInBytes();
            foreach (long d in shape)
            {
                expected = checked(expected * d);
            }
        }
        catch (OverflowException)
        {
            throw new SafeTensorsFormatException(path, name, $"shape [{string.Join(", ", shape)}] is too large");
        }

        if (end - begin != expected)
        {
            throw new SafeTensorsFormatException(path, name, $"shape [{string.Join(", ", shape)}] of {dtypeName} needs {expected} bytes but data_offsets [{begin}, {end}] hold {end - begin}");
        }

        return new SafeTensorInfo(name, dtype, shape, begin, end);
    }

    private static long ReadOffset(string path, string name, JsonElement element)
    {
        if (element.ValueKind != JsonValueKind.Number || !element.TryGetInt64(out long offset) || offset < 0)
        {
            throw new SafeTensorsFormatException(path, name, $"data_offsets must be non-negative integers, got {element.GetRawText()}");
        }

        return offset;
    }

    // The buffer must be covered exactly: tensors in offset order, each starting where the previous ended,
    // the first at 0 and the last ending at the end of the file.
    private static void CheckLayout(string path, List<SafeTensorInfo> tensors, long bufferLength)
    {
        var ordered = tensors.OrderBy(t => t.Begin).ThenBy(t => t.End).ToList();
        long position = 0;
        SafeTensorInfo? previous = null;
        foreach (SafeTensorInfo t in ordered)
        {
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
