using System.Globalization;
using Microsoft.Build.Framework;
using Microsoft.Build.Utilities;
using QLoRA.Core.Quantization;

namespace QLoRA.Build.Tasks;

/// <summary>
/// MSBuild task: pre-quantizes one model of <c>QLoRAWeights</c> items (all items sharing an OutputName) into
/// <c>$(OutputRoot)/&lt;OutputName&gt;/</c> plus <c>&lt;OutputName&gt;.qlora.json</c>. Errors are reported as MSBuild errors
/// with QLR codes and the file at fault.
/// </summary>
public sealed class QuantizeWeights : Microsoft.Build.Utilities.Task
{
    /// <summary>The model's .safetensors files, or its model.safetensors.index.json.</summary>
    [Required]
    public ITaskItem[] Sources { get; set; } = [];

    /// <summary>config.json of the model.</summary>
    [Required]
    public string Config { get; set; } = "";

    /// <summary>Name of the output folder and manifest.</summary>
    [Required]
    public string OutputName { get; set; } = "";

    /// <summary>Folder receiving the output (normally $(IntermediateOutputPath)qlora/).</summary>
    [Required]
    public string OutputRoot { get; set; } = "";

    /// <summary>nf4, fp4 or none.</summary>
    public string QuantType { get; set; } = "nf4";

    /// <summary>Values per absmax block: a power of two in 32..4096.</summary>
    public string BlockSize { get; set; } = "64";

    /// <summary>true to double-quantize the absmax.</summary>
    public string DoubleQuant { get; set; } = "true";

    /// <summary>Semicolon-separated module names left unquantized.</summary>
    public string Keep { get; set; } = "lm_head;embed_tokens";

    /// <summary>LoftQ rank: 0 (the default) for plain quantization; r &gt; 0 adjusts the base by LoftQ and writes the initial adapter in loftq_init/.</summary>
    public string LoftQRank { get; set; } = "0";

    /// <summary>lora_alpha of the LoftQ adapter (its scaling is alpha / r).</summary>
    public string LoftQAlpha { get; set; } = "16";

    /// <summary>LoftQ's alternations of quantization and rank-r SVD.</summary>
    public string LoftQIterations { get; set; } = "1";

    /// <summary>The folder written.</summary>
    [Output]
    public string ModelDirectory { get; set; } = "";

    /// <inheritdoc />
    public override bool Execute()
    {
        try
        {
            WeightsJob job = CreateJob();
            Log.LogMessage(MessageImportance.High, $"QLoRA: quantizing '{OutputName}' ({job.Quantization?.Type.ToBnbName() ?? "no quantization"}) from {Sources.Length} file(s)");
            ModelDirectory = new WeightsQuantizer(message => Log.LogMessage(MessageImportance.Normal, "QLoRA: " + message)).Run(job);
            Log.LogMessage(MessageImportance.High, $"QLoRA: wrote {ModelDirectory}");
            return true;
        }
        catch (WeightsBuildException e)
        {
            Log.LogError("QLoRA", e.Code, null, e.File, 0, 0, 0, 0, e.Message);
            return false;
        }
    }

    private WeightsJob CreateJob()
    {
        string first = Sources.Length > 0 ? Sources[0].ItemSpec : Config;
        if (string.IsNullOrWhiteSpace(OutputName) || OutputName.IndexOfAny(Path.GetInvalidFileNameChars()) >= 0)
        {
            throw new WeightsBuildException(BuildErrorCodes.InvalidMetadata, first, $"OutputName '{OutputName}' is not a valid folder name");
        }

        QuantizationOptions? options = null;
        if (!string.Equals(QuantType, "none", StringComparison.OrdinalIgnoreCase))
        {
            if (!QuantTypeNames.TryParse(QuantType, out QuantType type))
            {
                throw new WeightsBuildException(BuildErrorCodes.InvalidMetadata, first, $"QuantType '{QuantType}' is not nf4, fp4 or none");
            }

            if (!int.TryParse(BlockSize, NumberStyles.Integer, CultureInfo.InvariantCulture, out int blockSize) || !BlockwiseLayout.IsValidBlockSize(blockSize))
            {
                throw new WeightsBuildException(BuildErrorCodes.InvalidMetadata, first, $"BlockSize '{BlockSize}' is not a power of two from 32 to 4096");
            }

            if (!bool.TryParse(DoubleQuant, out bool doubleQuant))
            {
                throw new WeightsBuildException(BuildErrorCodes.InvalidMetadata, first, $"DoubleQuant '{DoubleQuant}' is not true or false");
            }

            options = new QuantizationOptions(type, blockSize, doubleQuant);
        }

        string[] keep = Keep.Split([';', ','], StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        // MSBuild treats Keep="" as unset (the defaults apply), so "none" is how an item asks to keep nothing.
        if (keep is [var only] && string.Equals(only, "none", StringComparison.OrdinalIgnoreCase))
        {
            keep = [];
        }
        LoftQJob? loftQ = null;
        if (!int.TryParse(LoftQRank, NumberStyles.Integer, CultureInfo.InvariantCulture, out int rank) || rank < 0)
        {
            throw new WeightsBuildException(BuildErrorCodes.InvalidMetadata, first, $"LoftQRank '{LoftQRank}' is not a rank (0 turns LoftQ off)");
        }

        if (rank > 0)
        {
            if (options is null)
            {
                throw new WeightsBuildException(BuildErrorCodes.InvalidMetadata, first, "LoftQRank needs a 4-bit QuantType: LoftQ adjusts the quantized base");
            }

            if (!double.TryParse(LoftQAlpha, NumberStyles.Float, CultureInfo.InvariantCulture, out double alpha) || !(alpha > 0) || double.IsInfinity(alpha))
            {
                throw new WeightsBuildException(BuildErrorCodes.InvalidMetadata, first, $"LoftQAlpha '{LoftQAlpha}' is not a positive number");
            }

            if (!int.TryParse(LoftQIterations, NumberStyles.Integer, CultureInfo.InvariantCulture, out int iterations) || iterations < 1)
            {
                throw new WeightsBuildException(BuildErrorCodes.InvalidMetadata, first, $"LoftQIterations '{LoftQIterations}' is not a positive integer");
            }

            loftQ = new LoftQJob(rank, alpha, iterations);
        }

        return new WeightsJob([.. Sources.Select(s => s.GetMetadata("FullPath"))], Config, OutputName, OutputRoot, options, keep) { LoftQ = loftQ };
    }
}
