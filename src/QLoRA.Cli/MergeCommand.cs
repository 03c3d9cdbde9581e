using System.CommandLine;
using QLoRA.Core.HuggingFace;
using QLoRA.Core.Peft;

namespace QLoRA.Cli;

/// <summary>
/// <c>qlora merge --model M --adapter A --output DIR [--dtype bf16|nf4]</c>: the base model with the PEFT adapter merged
/// in, as a complete Hugging Face folder — bf16 (dequantized base + s·B·A, exact up to rounding to bf16) or nf4
/// (requantized, lossy).
/// </summary>
internal static class MergeCommand
{
    public static Command Create(CommandContext context)
    {
        var model = new Option<string>("--model") { Description = "The base model: a folder, or an id in the local Hugging Face cache", Required = true };
        var adapter = new Option<string>("--adapter") { Description = "The PEFT LoRA adapter folder", Required = true };
        var output = new Option<string>("--output") { Description = "The folder to write", Required = true };
        var dtype = new Option<string>("--dtype") { Description = "bf16 (exact) or nf4 (requantized, lossy)", DefaultValueFactory = _ => "bf16" };
        var command = new Command("merge", "Merge a LoRA adapter into its base model") { model, adapter, output, dtype };
        command.SetAction(parsed =>
        {
            MergedWeights weights = parsed.GetValue(dtype)!.ToLowerInvariant() switch
            {
                "bf16" => MergedWeights.BFloat16,
                "nf4" => MergedWeights.FourBit,
                var other => throw new CliException($"--dtype '{other}' is not bf16 or nf4"),
            };
            string baseFolder = HubCache.ResolveOrDownload(parsed.GetValue(model)!);
            LoraAdapter loaded = LoraAdapter.Load(parsed.GetValue(adapter)!);
            LoraMerger.Merge(baseFolder, loaded, parsed.GetValue(output)!, new MergeOptions { Weights = weights });
            context.Output.WriteLine($"wrote {Path.GetFullPath(parsed.GetValue(output)!)} ({loaded.Modules.Count} modules merged, {(weights == MergedWeights.BFloat16 ? "bf16" : "nf4, requantized")})");
            return 0;
        });
        return command;
    }
}
