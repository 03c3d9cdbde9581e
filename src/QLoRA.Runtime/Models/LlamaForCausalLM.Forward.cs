using QLoRA.Core;
using QLoRA.Core.HuggingFace;
using QLoRA.Core.Weights;
using QLoRA.Modeling;
using QLoRA.Runtime.Ops;
using QLoRA.Runtime.Tensors;
using Device = QLoRA.Runtime.Devices.Device;

namespace QLoRA.Runtime.Models;

/// <summary>The Llama forward pass, composed from the runtime's kernels, in the device's compute dtype (float32 sums).</summary>
public partial class LlamaForCausalLM
{
    private HfModelConfig? _config;
    private Device? _device;

    /// <summary>The config the model was loaded with.</summary>
    public HfModelConfig Config => _config ?? throw new InvalidOperationException("This model was built with LoadFrom; load it with Load(device, folder) to run it.");

    /// <summary>
    /// Loads a Llama-family folder (llama, mistral, qwen2: config.json + safetensors, bf16 or bitsandbytes 4-bit) ready to
    /// run: the same as the generated <c>Load</c>. Projection biases (qwen2's q/k/v, llama's attention_bias/mlp_bias) load
    /// when present; lm_head is the embeddings only when config.json's tie_word_embeddings says so.
    /// </summary>
    /// <exception cref="HfConfigException">config.json is invalid or not a Llama-family model.</exception>
    /// <exception cref="CheckpointFormatException">A tensor is missing or has the wrong shape (named).</exception>
    public static LlamaForCausalLM LoadModel(Device device, string path, LoadOptions? options = null) => Load(device, path, options);

    // The generated Load hands over the config: keep it for Forward and check what the config promises.
    partial void OnLoaded(Device device, HfModelConfig config)
    {
        for (int i = 0; i < Layers.Length && config.QkvBias; i++)
        {
            foreach ((string name, Layers.QuantizedLinear layer) in new[] { ("q_proj", Layers[i].QProj), ("k_proj", Layers[i].KProj), ("v_proj", Layers[i].VProj) })
            {
                if (layer.Bias is null)
                {
                    throw new CheckpointFormatException(Path.GetDirectoryName(config.SourcePath) ?? config.SourcePath, $"model.layers.{i}.self_attn.{name}.bias", $"missing: {config.ModelType} with these settings has q/k/v projection biases");
                }
            }
        }

        _config = config;
        _device = device;
    }

    /// <summary>Logits [tokens, vocab] of one sequence (positions 0…n−1), computed in float32 from the last hidden states and returned to the host.</summary>
    /// <exception cref="ArgumentException">No tokens.</exception>
    public float[] Forward(ReadOnlySpan<int> ids) => ToEngineModel().Logits(ids);
}
