using System.CommandLine;
using System.Text.Json;
using System.Text.Json.Nodes;
using QLoRA.Core;
using QLoRA.Core.HuggingFace;
using QLoRA.Core.SafeTensors;
using QLoRA.Core.Weights;

namespace QLoRA.Cli;

/// <summary>
/// <c>qlora dequantize IN OUT [--dtype bf16|f16|f32]</c>: a bitsandbytes 4-bit file or folder to dense safetensors, each
/// 4-bit weight decoded as bitsandbytes decodes it and every tensor written in the chosen dtype; a folder gets a
/// complete folder (config.json without quantization_config, the tokenizer and generation files).
/// </summary>
internal static class DequantizeCommand
{
    public static Command Create(CommandContext context)
    {
        var input = new Argument<string>("in") { Description = "A bitsandbytes 4-bit .safetensors file or model folder" };
        var output = new Argument<string>("out") { Description = "The .safetensors file (or folder) to write" };
        var dtype = new Option<string>("--dtype") { Description = "bf16, f16 or f32", DefaultValueFactory = _ => "bf16" };
        var command = new Command("dequantize", "Decode a 4-bit checkpoint to dense safetensors") { input, output, dtype };
        command.SetAction(parsed => Run(context, parsed.GetValue(input)!, parsed.GetValue(output)!, parsed.GetValue(dtype)!));
        return command;
    }

    private static int Run(CommandContext context, string input, string output, string dtypeName)
    {
        DType dtype = dtypeName.ToLowerInvariant() switch
        {
            "bf16" => DType.BF16,
            "f16" => DType.F16,
            "f32" => DType.F32,
            _ => throw new CliException($"--dtype '{dtypeName}' is not bf16, f16 or f32"),
        };
        bool folder = Directory.Exists(input);
        if (!folder && !File.Exists(input))
        {
            throw new FileNotFoundException($"{input}: no such file or folder", input);
        }

        string full = Path.GetFullPath(output).TrimEnd(Path.DirectorySeparatorChar);
        string partial = $"{full}.partial-{Guid.NewGuid():N}";
        try
        {
            string weightsPath = folder ? Path.Combine(Directory.CreateDirectory(partial).FullName, "model.safetensors") : partial;
            using (CheckpointWeightSource source = CheckpointWeightSource.Open(input))
            {
                var entries = new List<(SafeTensorSpec, ReadOnlyMemory<byte>)>();
                Progress.Run(context, "dequantizing", report =>
                {
                    foreach (string name in source.Names)
                    {
                        WeightInfo info = source.Describe(name)!;
                        report($"{(info.QuantType is null ? "converting" : "dequantizing")} {name} [{string.Join("×", info.Shape)}]");
                        float[] values = info.QuantType is not null ? source.ReadQuantized(name).DequantizeToSingle() : source.ReadSingle(name);
                        entries.Add((new SafeTensorSpec(name, dtype, info.Shape), Encode(values, dtype, info.Shape)));
                    }

                    SafeTensorsWriter.Save(weightsPath, entries, new Dictionary<string, string> { ["format"] = "pt" });
                    return weightsPath;
                });
            }

            if (folder)
            {
                var config = (JsonObject)HfModelConfig.Load(Path.Combine(input, "config.json")).Raw.DeepClone();
                config.Remove("quantization_config");
                config[config.ContainsKey("dtype") ? "dtype" : "torch_dtype"] = dtype switch { DType.BF16 => "bfloat16", DType.F16 => "float16", _ => "float32" };
                AtomicFile.WriteAllText(Path.Combine(partial, "config.json"), config.ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n");
                HuggingFaceFolder.CopyCompanions(input, partial);
                HuggingFaceFolder.Replace(partial, full);
            }
            else
            {
                File.Move(partial, full, overwrite: true);
            }
        }
        finally
        {
            if (Directory.Exists(partial))
            {
                Directory.Delete(partial, recursive: true);
            }
            else if (File.Exists(partial))
            {
                File.Delete(partial);
            }
        }

        context.Output.WriteLine($"wrote {full} ({dtypeName})");
        return 0;
    }

    private static byte[] Encode(float[] values, DType dtype, IReadOnlyList<long> shape) => dtype switch
    {
        DType.F32 => TensorData.FromSingle(values, [.. shape]).Data,
        DType.BF16 => TensorData.FromSingleAsBFloat16(values, [.. shape]).Data,
        _ => System.Runtime.InteropServices.MemoryMarshal.AsBytes(values.Select(v => BitConverter.HalfToUInt16Bits((Half)v)).ToArray().AsSpan()).ToArray(),
    };
}
