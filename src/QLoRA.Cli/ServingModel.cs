using System.CommandLine;
using System.Globalization;
using QLoRA.Core.HuggingFace;
using QLoRA.Core.Quantization;
using QLoRA.Modeling;
using QLoRA.Runtime.Devices;
using QLoRA.Runtime.Generation;
using QLoRA.Runtime.Models;
using QLoRA.Text;
using QLoRA.Text.Tokenization;

namespace QLoRA.Cli;

/// <summary>
/// A model loaded for generation by <c>generate</c> and <c>chat</c>: the device, the weights (4-bit or dense), the
/// engine, an optional serving adapter, and the tokenizer and generation config when the folder has them.
/// </summary>
internal sealed class ServingModel : IDisposable
{
    public const string AdapterName = "adapter";

    private readonly LlamaForCausalLM _model;

    private ServingModel(Device device, LlamaForCausalLM model, GenerationEngine engine, string folder, string? adapter)
    {
        Device = device;
        _model = model;
        Engine = engine;
        Folder = folder;
        Adapter = adapter is null ? null : AdapterName;
        bool hasTokenizer = File.Exists(Path.Combine(folder, "tokenizer.json"));
        GenerationConfig = GenerationConfig.Load(folder);
        Text = hasTokenizer ? new TextGenerator(engine, HfTokenizer.FromFolder(folder), GenerationConfig) : null;
    }

    public Device Device { get; }

    public GenerationEngine Engine { get; }

    public string Folder { get; }

    public string? Adapter { get; }

    public GenerationConfig GenerationConfig { get; }

    /// <summary>Null when the folder has no tokenizer.json (token ids in and out only).</summary>
    public TextGenerator? Text { get; }

    /// <summary>Stop ids: generation_config's eos list, else the tokenizer's eos.</summary>
    public IReadOnlyList<int> StopTokenIds => Text?.StopTokenIds ?? GenerationConfig.EosTokenIds;

    public static Option<string> ModelOption() => new("--model") { Description = "A Hugging Face model folder, or an id (org/name[@revision]) in the local Hugging Face cache", Required = true };

    public static Option<string?> AdapterOption() => new("--adapter") { Description = "A PEFT LoRA adapter folder to serve with the model" };

    public static Option<string> QuantizeOption() => new("--quantize") { Description = "How dense projections load: nf4, fp4 or none (kept dense)", DefaultValueFactory = _ => "nf4" };

    public static LoadOptions ParseQuantize(string quantize) => quantize.ToLowerInvariant() switch
    {
        "none" => new LoadOptions(KeepProjectionsDense: true),
        "nf4" => new LoadOptions(QuantizeDenseAs: QuantizationOptions.Default),
        "fp4" => new LoadOptions(QuantizeDenseAs: QuantizationOptions.Default with { Type = QuantType.Fp4 }),
        _ => throw new CliException($"--quantize '{quantize}' is not nf4, fp4 or none"),
    };

    public static ServingModel Load(string model, string? adapter, string quantize, int maxSequenceLength = 0)
    {
        string folder = HubCache.ResolveOrDownload(model);
        LoadOptions options = ParseQuantize(quantize);
        Device device = Device.Best();
        LlamaForCausalLM? loaded = null;
        GenerationEngine? engine = null;
        try
        {
            loaded = LlamaForCausalLM.Load(device, folder, options);
            engine = new GenerationEngine(loaded.ToEngineModel(), new GenerationEngineOptions { MaxBatch = 4, MaxSequenceLength = maxSequenceLength });
            if (adapter is not null)
            {
                engine.Adapters.Load(AdapterName, adapter);
            }

            return new ServingModel(device, loaded, engine, folder, adapter);
        }
        catch
        {
            engine?.Dispose();
            loaded?.Dispose();
            device.Dispose();
            throw;
        }
    }

    public static int[] ParseTokens(string list, string option)
    {
        try
        {
            return [.. list.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Select(t => int.Parse(t, NumberStyles.Integer, CultureInfo.InvariantCulture))];
        }
        catch (Exception e) when (e is FormatException or OverflowException)
        {
            throw new CliException($"{option} '{list}' is not a comma-separated list of token ids");
        }
    }

    public void Dispose()
    {
        Engine.Dispose();
        _model.Dispose();
        Device.Dispose();
    }
}
