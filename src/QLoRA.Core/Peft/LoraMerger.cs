using System.Text.Json;
using System.Text.Json.Nodes;
using QLoRA.Core.BitsAndBytes;
using QLoRA.Core.HuggingFace;
using QLoRA.Core.Quantization;
using QLoRA.Core.SafeTensors;
using QLoRA.Core.Weights;

namespace QLoRA.Core.Peft;

/// <summary>The dtype a merged model is written in.</summary>
public enum MergedWeights
{
    /// <summary>Dense bfloat16: W = dequant(Q) + s·B·A, rounded once to bf16 (exact up to that rounding).</summary>
    BFloat16,

    /// <summary>bitsandbytes 4-bit: the merged weight requantized (lossy: one more quantization error).</summary>
    FourBit,
}

/// <summary>How <see cref="LoraMerger.Merge"/> runs.</summary>
public sealed record MergeOptions
{
    /// <summary>The output's weights.</summary>
    public MergedWeights Weights { get; init; } = MergedWeights.BFloat16;

    /// <summary>
    /// How a dense base was quantized when the adapter was trained on it (QLoRA quantizes on load): the merge adds the
    /// adapter to that dequantized weight, the one the adapter learned against. Null when the base was trained dense.
    /// </summary>
    public QuantizationOptions? TrainedOnQuantized { get; init; } = QuantizationOptions.Default;

    /// <summary>4-bit settings of the output (for <see cref="MergedWeights.FourBit"/>).</summary>
    public QuantizationOptions Output { get; init; } = QuantizationOptions.Default;

    /// <summary>Modules kept dense in a 4-bit output (substring of the name, as bitsandbytes' llm_int8_skip_modules).</summary>
    public IReadOnlyList<string> Keep { get; init; } = ["lm_head", "embed_tokens"];
}

/// <summary>
/// Merges a PEFT LoRA adapter into its base model and writes a complete Hugging Face folder: config.json (without
/// quantization_config for bf16; with bitsandbytes' for 4-bit), model.safetensors, and the base's tokenizer, chat
/// template and generation files. Written into a sibling folder and swapped in whole.
/// </summary>
public static class LoraMerger
{
    /// <summary>Merges <paramref name="adapter"/> into the model in <paramref name="baseFolder"/>, writing <paramref name="outputFolder"/>.</summary>
    /// <exception cref="PeftAdapterException">An adapted module is missing from the base or its shapes disagree (named).</exception>
    /// <exception cref="CheckpointFormatException">The base folder is malformed (named).</exception>
    public static void Merge(string baseFolder, LoraAdapter adapter, string outputFolder, MergeOptions? options = null)
    {
        options ??= new MergeOptions();
        HfModelConfig config = HfModelConfig.Load(Path.Combine(baseFolder, "config.json"));
        string output = Path.GetFullPath(outputFolder).TrimEnd(Path.DirectorySeparatorChar);
        string partial = $"{output}.partial-{Guid.NewGuid():N}";
        Directory.CreateDirectory(partial);
        try
        {
            using (CheckpointWeightSource source = CheckpointWeightSource.Open(baseFolder))
            {
                var shapes = new Dictionary<string, (int In, int Out)>(StringComparer.Ordinal);
                foreach (string module in adapter.Modules.Keys)
                {
                    WeightInfo info = source.Describe(module + ".weight") ?? throw new PeftAdapterException(adapter.SourcePath, module, $"adapts a module the base model in {baseFolder} does not have");
                    shapes[module] = (checked((int)info.Shape[1]), checked((int)info.Shape[0]));
                }

                adapter.Validate(shapes);
                if (adapter.SavedModules.Keys.FirstOrDefault(k => source.Describe(k) is null) is string absent)
                {
                    throw new PeftAdapterException(adapter.SourcePath, absent, $"is saved whole (modules_to_save) but the base model in {baseFolder} has no such weight (a tied lm_head is not untied by a merge)");
                }
                var entries = new List<(SafeTensorSpec, ReadOnlyMemory<byte>)>();
                foreach (string name in source.Names)
                {
                    entries.AddRange(MergedEntries(source, name, adapter, options));
                }

                SafeTensorsWriter.Save(Path.Combine(partial, "model.safetensors"), entries, new Dictionary<string, string> { ["format"] = "pt" });
            }

            var root = (JsonObject)config.Raw.DeepClone();
            root.Remove("quantization_config");
            root[root.ContainsKey("dtype") ? "dtype" : "torch_dtype"] = "bfloat16";
            if (options.Weights == MergedWeights.FourBit)
            {
                root["quantization_config"] = BnbQuantizationConfig.Create(options.Output, options.Keep);
            }

            AtomicFile.WriteAllText(Path.Combine(partial, "config.json"), root.ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n");
            HuggingFaceFolder.CopyCompanions(baseFolder, partial);
            HuggingFaceFolder.Replace(partial, output);
        }
        finally
        {
            if (Directory.Exists(partial))
            {
                Directory.Delete(partial, recursive: true);
            }
        }
    }

    /// <summary>W + s·B·A in float32 (each element summed over r in double, rounded once).</summary>
    public static float[] AddDelta(ReadOnlySpan<float> weight, LoraModuleWeights module, double scaling)
    {
        float[] a = module.A.ToSingle(), b = module.B.ToSingle();
        int rank = module.Rank, inFeatures = module.InFeatures, outFeatures = module.OutFeatures;
        var merged = new float[weight.Length];
        for (int o = 0; o < outFeatures; o++)
        {
            for (int i = 0; i < inFeatures; i++)
            {
                double delta = 0;
                for (int r = 0; r < rank; r++)
                {
                    delta += (double)b[(o * rank) + r] * a[(r * inFeatures) + i];
                }

                merged[(o * inFeatures) + i] = (float)(weight[(o * inFeatures) + i] + (scaling * delta));
            }
        }

        return merged;
    }

    private static IEnumerable<(SafeTensorSpec, ReadOnlyMemory<byte>)> MergedEntries(CheckpointWeightSource source, string name, LoraAdapter adapter, MergeOptions options)
    {
        WeightInfo info = source.Describe(name)!;
        string module = name.EndsWith(".weight", StringComparison.Ordinal) ? name[..^".weight".Length] : name;
        bool adapted = adapter.Modules.TryGetValue(module, out LoraModuleWeights? lora);
        bool keepDense = options.Keep.Any(k => name.Contains(k, StringComparison.Ordinal)) || info.Shape.Count != 2;
        if (!adapted && info.QuantType is not null && options.Weights == MergedWeights.FourBit && !adapter.SavedModules.ContainsKey(name))
        {
            return BnbFourBitTensor.Entries(name, source.ReadQuantized(name)); // untouched 4-bit weight: copied as is
        }

        float[] weight;
        if (adapter.SavedModules.TryGetValue(name, out TensorData? saved))
        {
            // A module trained whole (modules_to_save): its weight replaces the base's.
            if (saved.ElementCount != info.Shape.Aggregate(1L, (a, d) => a * d))
            {
                throw new PeftAdapterException(adapter.SourcePath, name, $"is saved whole with {saved.ElementCount} values; the base's is [{string.Join(", ", info.Shape)}]");
            }

            weight = saved.ToSingle();
        }
        else if (info.QuantType is not null)
        {
            weight = source.ReadQuantized(name).DequantizeToSingle();
        }
        else if (adapted && options.TrainedOnQuantized is QuantizationOptions trained)
        {
            // The adapter learned against the dense weight as quantized on load: add it to that.
            weight = QuantizedTensor.Quantize(source.ReadSingle(name), info.Shape, trained, name).DequantizeToSingle();
        }
        else
        {
            weight = source.ReadSingle(name);
        }

        if (adapted)
        {
            weight = AddDelta(weight, lora!, adapter.Config.ScalingOf(module));
        }

        long[] shape = [.. info.Shape];
        if (options.Weights == MergedWeights.FourBit && !keepDense)
        {
            return BnbFourBitTensor.Entries(name, QuantizedTensor.Quantize(weight, shape, options.Output, name));
        }

        TensorData bf16 = TensorData.FromSingleAsBFloat16(weight, shape);
        return [(new SafeTensorSpec(name, DType.BF16, shape), bf16.Data)];
    }
}
