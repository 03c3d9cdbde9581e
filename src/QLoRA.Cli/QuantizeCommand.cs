using System.CommandLine;
using System.Globalization;
using QLoRA.Build.Tasks;
using QLoRA.Core;
using QLoRA.Core.BitsAndBytes;
using QLoRA.Core.Quantization;
using QLoRA.Core.SafeTensors;

namespace QLoRA.Cli;

/// <summary>
/// <c>qlora quantize IN OUT</c>: a Hugging Face folder in gives a complete bitsandbytes 4-bit folder out (weights,
/// config.json with quantization_config, tokenizer and generation files), exactly as the QuantizeWeights MSBuild task
/// writes it; a lone .safetensors file gives a 4-bit .safetensors file. Every 2-D linear weight not kept is quantized.
/// </summary>
internal static class QuantizeCommand
{
    public static Command Create(CommandContext context)
    {
        var input = new Argument<string>("in") { Description = "A Hugging Face model folder, or a .safetensors file" };
        var output = new Argument<string>("out") { Description = "The folder (or .safetensors file) to write" };
        var type = new Option<string>("--quant-type") { Description = "nf4 or fp4", DefaultValueFactory = _ => "nf4" };
        var block = new Option<int>("--block-size") { Description = "Values per absmax block (a power of two, 32…4096)", DefaultValueFactory = _ => 64 };
        var doubleQuant = new Option<bool>("--double-quant") { Description = "Quantize the absmax constants to 8 bits", DefaultValueFactory = _ => true };
        var keep = new Option<string>("--keep") { Description = "Comma-separated modules left dense", DefaultValueFactory = _ => "lm_head,embed_tokens" };
        var loftQ = new Option<int>("--loftq-rank") { Description = "LoftQ rank: adjust the base and write the initial adapter (loftq_init/); 0 for none", DefaultValueFactory = _ => 0 };
        var command = new Command("quantize", "Quantize a checkpoint to the bitsandbytes 4-bit layout") { input, output, type, block, doubleQuant, keep, loftQ };
        command.SetAction(parsed =>
        {
            QuantizationOptions options = Options(parsed.GetValue(type)!, parsed.GetValue(block), parsed.GetValue(doubleQuant));
            string[] kept = parsed.GetValue(keep)!.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
            return Run(context, parsed.GetValue(input)!, parsed.GetValue(output)!, options, kept, parsed.GetValue(loftQ));
        });
        return command;
    }

    internal static QuantizationOptions Options(string type, int blockSize, bool doubleQuant)
    {
        if (!QuantTypeNames.TryParse(type, out QuantType parsed))
        {
            throw new CliException($"--quant-type '{type}' is not nf4 or fp4");
        }

        if (!BlockwiseLayout.IsValidBlockSize(blockSize))
        {
            throw new CliException($"--block-size {blockSize} is not a power of two from 32 to 4096");
        }

        return new QuantizationOptions(parsed, blockSize, doubleQuant);
    }

    private static int Run(CommandContext context, string input, string output, QuantizationOptions options, string[] keep, int loftQRank)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(loftQRank, "--loftq-rank");
        if (Directory.Exists(input))
        {
            string[] sources = Directory.GetFiles(input, "*.safetensors");
            if (sources.Length == 0)
            {
                throw new CliException($"{input}: no .safetensors file in the folder");
            }

            string full = Path.GetFullPath(output).TrimEnd(Path.DirectorySeparatorChar);
            var job = new WeightsJob([.. sources.Order(StringComparer.Ordinal)], Path.Combine(input, "config.json"), Path.GetFileName(full), Path.GetDirectoryName(full)!, options, keep)
            {
                LoftQ = loftQRank > 0 ? new LoftQJob(loftQRank, 16, 1) : null,
                WriteManifest = false,
            };
            string written = Progress.Run(context, "quantizing", report => new WeightsQuantizer(report).Run(job));
            context.Output.WriteLine($"wrote {written}");
            return 0;
        }

        if (!File.Exists(input))
        {
            throw new FileNotFoundException($"{input}: no such file or folder", input);
        }

        if (loftQRank > 0)
        {
            throw new CliException("--loftq-rank needs a model folder (with config.json)");
        }

        using SafeTensorsFile file = SafeTensorsFile.Open(input);
        var entries = new List<(SafeTensorSpec, ReadOnlyMemory<byte>)>();
        Progress.Run(context, "quantizing", report =>
        {
            foreach (SafeTensorInfo info in file.Tensors)
            {
                string module = info.Name.EndsWith(".weight", StringComparison.Ordinal) ? info.Name[..^".weight".Length] : info.Name;
                bool linear = info.Shape.Count == 2 && info.Dtype.IsQuantizableFloat() && !module.Contains("embed", StringComparison.Ordinal) && !WeightsQuantizer.IsKept(module, keep);
                if (linear)
                {
                    report($"quantizing {info.Name} [{string.Join("×", info.Shape)}]");
                    entries.AddRange(BnbFourBitTensor.Entries(info.Name, QuantizedTensor.Quantize(file.GetBytes(info.Name), info.Dtype, info.Shape, options, info.Name)));
                }
                else
                {
                    entries.Add((new SafeTensorSpec(info.Name, info.Dtype, info.Shape), file.GetMemory(info.Name)));
                }
            }

            SafeTensorsWriter.Save(output, entries, new Dictionary<string, string> { ["format"] = "pt" });
            return output;
        });
        context.Output.WriteLine($"wrote {output} ({entries.Count(e => e.Item1.Name.EndsWith(".absmax", StringComparison.Ordinal))} tensors quantized, {options.Type.ToBnbName()} block {options.BlockSize.ToString(CultureInfo.InvariantCulture)})");
        return 0;
    }
}
