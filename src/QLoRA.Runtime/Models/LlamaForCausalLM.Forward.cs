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
    public float[] Forward(ReadOnlySpan<int> ids)
    {
        HfModelConfig c = Config;
        Device device = _device!;
        int t = ids.Length;
        if (t == 0)
        {
            throw new ArgumentException("At least one token is needed.", nameof(ids));
        }

        DType dtype = Embed.Table.Dtype; // the device's compute dtype when the model was loaded
        int hidden = c.HiddenSize, heads = c.NumAttentionHeads, kvHeads = c.NumKeyValueHeads, headDim = c.HeadDim;
        using DeviceTensor x = DeviceTensor.Allocate(device, dtype, t, hidden);
        Embed.Forward(ids, x);
        using DeviceTensor positions = DeviceTensor.FromHost<int>(device, [.. Enumerable.Range(0, t)], DType.I32, t);
        using DeviceTensor invFreq = DeviceTensor.FromHost<float>(device, RopeFrequencies.Compute(c.Rope, headDim), DType.F32, headDim / 2);
        using DeviceTensor h = DeviceTensor.Allocate(device, dtype, t, hidden);
        using DeviceTensor inverseRms = DeviceTensor.Allocate(device, DType.F32, t);
        using DeviceTensor q = DeviceTensor.Allocate(device, dtype, t, heads * headDim);
        using DeviceTensor k = DeviceTensor.Allocate(device, dtype, t, kvHeads * headDim);
        using DeviceTensor v = DeviceTensor.Allocate(device, dtype, t, kvHeads * headDim);
        using DeviceTensor attention = DeviceTensor.Allocate(device, dtype, t, heads, headDim);
        using DeviceTensor lse = DeviceTensor.Allocate(device, DType.F32, t, heads);
        using DeviceTensor projected = DeviceTensor.Allocate(device, dtype, t, hidden);
        using DeviceTensor gate = DeviceTensor.Allocate(device, dtype, t, c.IntermediateSize);
        using DeviceTensor up = DeviceTensor.Allocate(device, dtype, t, c.IntermediateSize);
        using DeviceTensor act = DeviceTensor.Allocate(device, dtype, t, c.IntermediateSize);
        int[] boundaries = [0, t];
        foreach (LlamaDecoderLayer layer in Layers)
        {
            layer.InputLayernorm.Forward(x, h, inverseRms);
            layer.QProj.Forward(h, q);
            layer.KProj.Forward(h, k);
            layer.VProj.Forward(h, v);
            DeviceTensor q3 = q.Reshape(t, heads, headDim), k3 = k.Reshape(t, kvHeads, headDim), v3 = v.Reshape(t, kvHeads, headDim);
            Rope.Forward(q3, positions, invFreq);
            Rope.Forward(k3, positions, invFreq);
            Attention.Forward(q3, k3, v3, boundaries, attention, lse, c.SlidingWindow ?? 0);
            layer.OProj.Forward(attention.Reshape(t, heads * headDim), projected);
            Elementwise.Add(x, projected, x);
            layer.PostAttentionLayernorm.Forward(x, h, inverseRms);
            layer.GateProj.Forward(h, gate);
            layer.UpProj.Forward(h, up);
            SwiGlu.Forward(gate, up, act);
            layer.DownProj.Forward(act, projected);
            Elementwise.Add(x, projected, x);
        }

        Norm.Forward(x, h, inverseRms);
        using DeviceTensor logits = DeviceTensor.Allocate(device, DType.F32, t, c.VocabSize);
        LmHead.Forward(h, logits);
        return logits.ToHost<float>();
    }
}
