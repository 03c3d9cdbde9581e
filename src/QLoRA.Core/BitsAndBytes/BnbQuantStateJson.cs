using System.Globalization;
using System.Text;
using System.Text.Json;
using QLoRA.Core.Quantization;

namespace QLoRA.Core.BitsAndBytes;

/// <summary>
/// The non-tensor part of a bitsandbytes <c>QuantState</c>, packed as UTF-8 JSON into a uint8 tensor named
/// <c>&lt;weight&gt;.quant_state.bitsandbytes__nf4</c> (or <c>__fp4</c>) — byte for byte as Python's <c>json.dumps</c> writes it.
/// </summary>
/// <param name="QuantType">nf4 or fp4.</param>
/// <param name="BlockSize">Values per absmax block.</param>
/// <param name="Dtype">Original dtype.</param>
/// <param name="Shape">Logical shape.</param>
/// <param name="NestedBlockSize">Nested block size, when double-quantized.</param>
/// <param name="NestedOffset">Mean subtracted before nested quantization, when double-quantized.</param>
public sealed record BnbQuantStateJson(QuantType QuantType, int BlockSize, DType Dtype, IReadOnlyList<long> Shape, int? NestedBlockSize, double? NestedOffset)
{
    /// <summary>The JSON text, key order and separators as <c>json.dumps</c> of bitsandbytes' <c>as_dict(packed=True)</c>.</summary>
    public string ToJson()
    {
        var sb = new StringBuilder();
        sb.Append("{\"quant_type\": \"").Append(QuantType.ToBnbName()).Append('"');
        sb.Append(", \"blocksize\": ").Append(BlockSize.ToString(CultureInfo.InvariantCulture));
        sb.Append(", \"dtype\": \"").Append(Dtype.TorchName()).Append('"');
        sb.Append(", \"shape\": [").Append(string.Join(", ", Shape.Select(d => d.ToString(CultureInfo.InvariantCulture)))).Append(']');
        if (NestedBlockSize is int nested)
        {
            sb.Append(", \"nested_blocksize\": ").Append(nested.ToString(CultureInfo.InvariantCulture));
            sb.Append(", \"nested_dtype\": \"float32\"");
            sb.Append(", \"nested_offset\": ").Append(PythonFloat.Repr(NestedOffset ?? 0));
        }

        return sb.Append('}').ToString();
    }

    /// <summary>Parses the packed JSON; <paramref name="file"/> and <paramref name="tensor"/> name the source in errors.</summary>
    /// <exception cref="CheckpointFormatException">Malformed JSON or a missing, mistyped or out-of-range field.</exception>
    public static BnbQuantStateJson Parse(ReadOnlySpan<byte> utf8, string file, string tensor)
    {
        JsonDocument document;
        try
        {
            if (!System.Text.Unicode.Utf8.IsValid(utf8))
            {
                throw new CheckpointFormatException(file, tensor, "the packed quant state is not valid UTF-8");
            }

            document = JsonDocument.Parse(utf8.ToArray());
        }
        catch (JsonException e)
        {
            throw new CheckpointFormatException(file, tensor, $"the packed quant state is not valid JSON ({e.Message})", e);
        }

        using (document)
        {
            JsonElement root = document.RootElement;
            if (root.ValueKind != JsonValueKind.Object)
            {
                throw new CheckpointFormatException(file, tensor, "the packed quant state must be a JSON object");
            }

            var keys = new HashSet<string>(StringComparer.Ordinal);
            foreach (JsonProperty property in root.EnumerateObject())
            {
                if (!keys.Add(property.Name))
                {
                    throw new CheckpointFormatException(file, tensor, $"the packed quant state repeats the key '{property.Name}'");
                }
            }

            string typeName = String(root, "quant_type", file, tensor);
            if (!QuantTypeNames.TryParse(typeName, out QuantType type))
            {
                throw new CheckpointFormatException(file, tensor, $"quant_type '{typeName}' is not nf4 or fp4");
            }

            int blockSize = Int(root, "blocksize", file, tensor);
            if (!BlockwiseLayout.IsValidBlockSize(blockSize))
            {
                throw new CheckpointFormatException(file, tensor, $"blocksize {blockSize} is not a power of two in 32..4096");
            }

            string dtypeName = String(root, "dtype", file, tensor);
            if (!DTypeInfo.TryParseTorchName(dtypeName, out DType dtype) || !dtype.IsQuantizableFloat())
            {
                throw new CheckpointFormatException(file, tensor, $"dtype '{dtypeName}' is not float32, bfloat16 or float16");
            }

            if (!root.TryGetProperty("shape", out JsonElement shapeElement) || shapeElement.ValueKind != JsonValueKind.Array)
            {
                throw new CheckpointFormatException(file, tensor, "the packed quant state has no 'shape' list");
            }

            var shape = new List<long>();
            foreach (JsonElement d in shapeElement.EnumerateArray())
            {
                if (d.ValueKind != JsonValueKind.Number || !d.TryGetInt64(out long dim) || dim < 0)
                {
                    throw new CheckpointFormatException(file, tensor, $"shape entry {d.GetRawText()} is not a non-negative integer");
                }

                shape.Add(dim);
            }

            if (BlockwiseLayout.TryElementCount(shape) is null)
            {
                throw new CheckpointFormatException(file, tensor, $"shape [{string.Join(", ", shape)}] holds more than 2^63 elements");
            }

            int? nestedBlockSize = null;
            double? offset = null;
            if (root.TryGetProperty("nested_blocksize", out _))
            {
                nestedBlockSize = Int(root, "nested_blocksize", file, tensor);
                if (nestedBlockSize is not > 0 || !BlockwiseLayout.IsValidNestedBlockSize(nestedBlockSize.Value))
                {
                    throw new CheckpointFormatException(file, tensor, $"nested_blocksize {nestedBlockSize} is not a power of two in 32..4096 (bitsandbytes writes 256)");
                }

                // The offset is applied in float32: a value beyond float32's range cannot be honoured.
                if (!root.TryGetProperty("nested_offset", out JsonElement o) || o.ValueKind != JsonValueKind.Number
                    || !o.TryGetDouble(out double od) || !double.IsFinite(od) || Math.Abs(od) > float.MaxValue)
                {
                    throw new CheckpointFormatException(file, tensor, "a double-quantized state needs a numeric 'nested_offset' within float32's range");
                }

                offset = od;
                if (root.TryGetProperty("nested_dtype", out JsonElement nd))
                {
                    if (nd.ValueKind != JsonValueKind.String)
                    {
                        throw new CheckpointFormatException(file, tensor, $"nested_dtype must be a string, not {nd.GetRawText()}");
                    }

                    if (nd.GetString() != "float32")
                    {
                        throw new CheckpointFormatException(file, tensor, $"nested_dtype '{nd.GetString()}' is not float32");
                    }
                }
            }

            return new BnbQuantStateJson(type, blockSize, dtype, shape, nestedBlockSize, offset);
        }
    }

    private static string String(JsonElement root, string name, string file, string tensor) =>
        root.TryGetProperty(name, out JsonElement e) && e.ValueKind == JsonValueKind.String
            ? e.GetString()!
            : throw new CheckpointFormatException(file, tensor, $"the packed quant state has no string '{name}'");

    private static int Int(JsonElement root, string name, string file, string tensor) =>
        root.TryGetProperty(name, out JsonElement e) && e.ValueKind == JsonValueKind.Number && e.TryGetInt32(out int v)
            ? v
            : throw new CheckpointFormatException(file, tensor, $"the packed quant state has no integer '{name}'");
}
