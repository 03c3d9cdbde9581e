using System.Runtime.InteropServices;
using System.Text;
using QLoRA.Core.Quantization;
using QLoRA.Core.SafeTensors;

namespace QLoRA.Core.BitsAndBytes;

/// <summary>
/// The bitsandbytes 4-bit serialization of one quantized weight in a safetensors file, as transformers saves it.
/// For a weight <c>P.weight</c>: <c>P.weight</c> (packed uint8, shape [(n+1)/2, 1]), <c>P.weight.absmax</c>
/// (float32, or uint8 codes when double-quantized), <c>P.weight.quant_map</c> (16 float32), and with double
/// quantization <c>P.weight.nested_absmax</c> and <c>P.weight.nested_quant_map</c> (256 float32), plus
/// <c>P.weight.quant_state.bitsandbytes__nf4</c> (uint8 UTF-8 JSON of the rest).
/// </summary>
public static class BnbFourBitTensor
{
    /// <summary>Suffix of the packed-JSON tensor, before the quant type name.</summary>
    public const string QuantStatePrefix = ".quant_state.bitsandbytes__";

    /// <summary>The safetensors entries (names, dtypes, shapes) that store <paramref name="state"/> under <paramref name="name"/>.</summary>
    public static IReadOnlyList<SafeTensorSpec> Describe(string name, QuantState state) =>
        [.. Entries(name, new QuantizedTensor(new byte[state.PackedBytes], state)).Select(e => e.Spec)];

    /// <summary>The safetensors entries with their bytes for <paramref name="tensor"/> stored under <paramref name="name"/>.</summary>
    public static IReadOnlyList<(SafeTensorSpec Spec, ReadOnlyMemory<byte> Data)> Entries(string name, QuantizedTensor tensor)
    {
        ArgumentException.ThrowIfNullOrEmpty(name);
        return [(WeightSpec(name, tensor.State), tensor.Packed), .. AuxiliaryEntries(name, tensor.State)];
    }

    /// <summary>The entry of the packed codes: U8 [(n+1)/2, 1].</summary>
    public static SafeTensorSpec WeightSpec(string name, QuantState state) => new(name, DType.U8, [state.PackedBytes, 1]);

    /// <summary>
    /// Every entry but the packed codes (absmax, nested statistics, quant_map, packed JSON), in the order they follow
    /// the codes: lets a writer stream the codes first and add these once the absmax is known.
    /// </summary>
    public static IReadOnlyList<(SafeTensorSpec Spec, ReadOnlyMemory<byte> Data)> AuxiliaryEntries(string name, QuantState state)
    {
        ArgumentException.ThrowIfNullOrEmpty(name);
        var entries = new List<(SafeTensorSpec, ReadOnlyMemory<byte>)>();
        BnbQuantStateJson json;
        switch (state.Absmax)
        {
            case PlainAbsmax plain:
                entries.Add((new SafeTensorSpec(name + ".absmax", DType.F32, [plain.Count]), Bytes(plain.Values)));
                json = new BnbQuantStateJson(state.Type, state.BlockSize, state.Dtype, state.Shape, null, null);
                break;
            case DoubleQuantizedAbsmax nested:
                entries.Add((new SafeTensorSpec(name + ".absmax", DType.U8, [nested.Count]), nested.Codes));
                entries.Add((new SafeTensorSpec(name + ".nested_absmax", DType.F32, [nested.NestedAbsmax.Length]), Bytes(nested.NestedAbsmax)));
                entries.Add((new SafeTensorSpec(name + ".nested_quant_map", DType.F32, [nested.NestedCode.Length]), Bytes(nested.NestedCode)));
                json = new BnbQuantStateJson(state.Type, state.BlockSize, state.Dtype, state.Shape, nested.NestedBlockSize, nested.Offset);
                break;
            default:
                throw new NotSupportedException($"Absmax statistics of type {state.Absmax.GetType().Name} have no bitsandbytes layout.");
        }

        // bitsandbytes builds FP4's map from Python numbers, where entry 8 is the integer -0: torch stores +0.0.
        float[] quantMap = FourBitCodes.Values(state.Type).ToArray();
        for (int i = 0; i < quantMap.Length; i++)
        {
            if (quantMap[i] == 0)
            {
                quantMap[i] = 0f;
            }
        }

        entries.Add((new SafeTensorSpec(name + ".quant_map", DType.F32, [16]), Bytes(quantMap)));
        byte[] packedJson = Encoding.UTF8.GetBytes(json.ToJson());
        entries.Add((new SafeTensorSpec(name + QuantStatePrefix + state.Type.ToBnbName(), DType.U8, [packedJson.Length]), packedJson));
        return entries;
    }

    /// <summary>True if <paramref name="name"/> is stored in the bitsandbytes 4-bit layout in <paramref name="file"/>.</summary>
    public static bool IsQuantized(SafeTensorsFile file, string name) =>
        file.Contains(name + QuantStatePrefix + "nf4") || file.Contains(name + QuantStatePrefix + "fp4");

    /// <summary>True for the auxiliary entries of a 4-bit weight (absmax, quant_map, nested_*, quant_state.*).</summary>
    public static bool IsAuxiliaryName(string tensorName) =>
        tensorName.EndsWith(".absmax", StringComparison.Ordinal) || tensorName.EndsWith(".quant_map", StringComparison.Ordinal)
        || tensorName.EndsWith(".nested_absmax", StringComparison.Ordinal) || tensorName.EndsWith(".nested_quant_map", StringComparison.Ordinal)
        || tensorName.Contains(QuantStatePrefix, StringComparison.Ordinal);

    /// <summary>
    /// Reads the 4-bit weight <paramref name="name"/>: packed codes stay in the mapping (no copy, valid while the file
    /// is open); statistics are validated against the packed JSON and copied.
    /// </summary>
    /// <exception cref="CheckpointFormatException">An entry is missing, has the wrong dtype or size, or the JSON disagrees with the tensors.</exception>
    public static QuantizedTensor Read(SafeTensorsFile file, string name)
    {
        string path = file.Path;
        string? stateName = new[] { "nf4", "fp4" }.Select(t => name + QuantStatePrefix + t).FirstOrDefault(file.Contains)
            ?? throw new CheckpointFormatException(path, name, $"no '{name}{QuantStatePrefix}nf4' (or fp4) entry: the tensor is not stored in the bitsandbytes 4-bit layout");
        Expect(file, stateName, DType.U8);
        BnbQuantStateJson json = BnbQuantStateJson.Parse(file.GetBytes(stateName), path, stateName);
        if (!stateName.EndsWith(json.QuantType.ToBnbName(), StringComparison.Ordinal))
        {
            throw new CheckpointFormatException(path, stateName, $"quant_type '{json.QuantType.ToBnbName()}' disagrees with the entry's name");
        }

        long count = BlockwiseLayout.TryElementCount(json.Shape)
            ?? throw new CheckpointFormatException(path, stateName, $"shape [{string.Join(", ", json.Shape)}] holds more than 2^63 elements");

        SafeTensorInfo weight = Expect(file, name, DType.U8);
        if (weight.ElementCount != BlockwiseLayout.PackedByteCount(count))
        {
            throw new CheckpointFormatException(path, name, $"holds {weight.ElementCount} packed bytes; shape [{string.Join(", ", json.Shape)}] needs {BlockwiseLayout.PackedByteCount(count)}");
        }

        long blocks = BlockwiseLayout.BlockCount(count, json.BlockSize);
        float[] quantMap = ReadFloats(file, name + ".quant_map", 16);
        ReadOnlySpan<float> expectedMap = FourBitCodes.Values(json.QuantType);
        for (int i = 0; i < 16; i++)
        {
            if (MathF.Abs(quantMap[i] - expectedMap[i]) > 1e-6f)
            {
                throw new CheckpointFormatException(path, name + ".quant_map", $"entry {i} is {quantMap[i]}, not the {json.QuantType.ToBnbName()} code {expectedMap[i]}: custom 4-bit code maps are not supported");
            }
        }

        AbsmaxStatistics stats;
        if (json.NestedBlockSize is int nestedBlockSize)
        {
            SafeTensorInfo codes = Expect(file, name + ".absmax", DType.U8);
            if (codes.ElementCount != blocks)
            {
                throw new CheckpointFormatException(path, codes.Name, $"holds {codes.ElementCount} codes; {blocks} blocks need one each");
            }

            long nestedBlocks = BlockwiseLayout.BlockCount(blocks, nestedBlockSize);
            float[] nestedAbsmax = ReadFloats(file, name + ".nested_absmax", nestedBlocks);
            float[] nestedMap = ReadFloats(file, name + ".nested_quant_map", 256);
            stats = new DoubleQuantizedAbsmax(file.GetBytes(codes.Name).ToArray(), nestedAbsmax, nestedMap, nestedBlockSize, (float)json.NestedOffset!.Value);
        }
        else
        {
            stats = new PlainAbsmax(ReadFloats(file, name + ".absmax", blocks));
        }

        var state = new QuantState(json.QuantType, json.BlockSize, json.Shape, json.Dtype, stats);
        return new QuantizedTensor(file.GetMemory(name), state);
    }

    private static SafeTensorInfo Expect(SafeTensorsFile file, string name, DType dtype)
    {
        if (!file.TryGetInfo(name, out SafeTensorInfo? info))
        {
            throw new CheckpointFormatException(file.Path, name, "missing entry of the bitsandbytes 4-bit layout");
        }

        if (info.Dtype != dtype)
        {
            throw new CheckpointFormatException(file.Path, name, $"is {info.Dtype}; the bitsandbytes 4-bit layout stores it as {dtype}");
        }

        return info;
    }

    private static float[] ReadFloats(SafeTensorsFile file, string name, long count)
    {
        SafeTensorInfo info = Expect(file, name, DType.F32);
        if (info.ElementCount != count)
        {
            throw new CheckpointFormatException(file.Path, name, $"holds {info.ElementCount} values; {count} are needed");
        }

        float[] values = file.GetSpan<float>(name).ToArray();
        foreach (float v in values)
        {
            if (!float.IsFinite(v))
            {
                throw new CheckpointFormatException(file.Path, name, $"holds a non-finite value ({v})");
            }
        }

        return values;
    }

    private static ReadOnlyMemory<byte> Bytes(float[] values) => MemoryMarshal.AsBytes(values.AsSpan()).ToArray();
}
