using QLoRA.Core;
using QLoRA.Core.Peft;
using QLoRA.Core.Quantization;
using QLoRA.Core.Weights;
using QLoRA.Runtime.Tensors;
using Device = QLoRA.Runtime.Devices.Device;

namespace QLoRA.Runtime.Layers;

/// <summary>
/// Puts LoRA adapters on a model's 4-bit linear layers by PEFT's rules — the run's LoRA configuration (targets, r,
/// alpha, rank_pattern, alpha_pattern, rsLoRA) wins over the attributes' defaults — either freshly initialized
/// (A kaiming-uniform with a = √5, B zero, as PEFT) or from a saved PEFT adapter.
/// </summary>
public static class LoraAttachment
{
    /// <summary>Attaches new adapters to every targeted QuantizedLinear; returns the module names adapted.</summary>
    /// <param name="device">Device of the layers.</param>
    /// <param name="layers">The model's layers with their checkpoint names (the generated <c>EnumerateLayers()</c>).</param>
    /// <param name="config">Targets and hyperparameters.</param>
    /// <param name="seed">Seed of A's initialization (reproducible runs).</param>
    public static IReadOnlyList<string> AttachNew(Device device, IEnumerable<(string Name, object Layer)> layers, LoraConfig config, int seed)
    {
        var rng = new Random(seed);
        var adapted = new List<string>();
        foreach ((string name, object layer) in layers)
        {
            if (layer is not QuantizedLinear linear || !config.Targets(name))
            {
                continue;
            }

            int rank = config.RankOf(name);
            var a = new float[rank * linear.InFeatures];
            var b = new float[linear.OutFeatures * rank];
            switch (config.InitLoraWeights)
            {
                case "true" or "false":
                    // kaiming_uniform_(a=√5) on A [r, in]: bound = gain·√(3/fan_in) with gain = √(2/(1+5)) → 1/√in.
                    Uniform(a, 1.0 / Math.Sqrt(linear.InFeatures), rng);
                    if (config.InitLoraWeights == "false")
                    {
                        Uniform(b, 1.0 / Math.Sqrt(rank), rng); // PEFT's init_lora_weights=False: B as nn.Linear initializes it
                    }

                    break;
                case "gaussian":
                    // PEFT: nn.init.normal_(lora_A, std=1/r); B zero.
                    for (int i = 0; i < a.Length; i++)
                    {
                        a[i] = (float)(Math.Sqrt(-2 * Math.Log(1 - rng.NextDouble())) * Math.Cos(2 * Math.PI * rng.NextDouble()) / rank);
                    }

                    break;
                default:
                    throw new PeftAdapterException(LoraConfig.FileName, "init_lora_weights",
                        $"'{config.InitLoraWeights}' cannot initialize new adapters here (true, false, gaussian; LoftQ through TrainerOptions.LoftQ)");
            }

            linear.Lora?.Dispose();
            linear.Lora = new LoraSlot(device, a, b, rank, linear.InFeatures, linear.OutFeatures, (float)config.ScalingOf(name), config.LoraDropout);
            adapted.Add(name);
        }

        return adapted;
    }

    private static void Uniform(float[] values, double bound, Random rng)
    {
        for (int i = 0; i < values.Length; i++)
        {
            values[i] = (float)(((rng.NextDouble() * 2) - 1) * bound);
        }
    }

    /// <summary>
    /// Attaches a saved PEFT adapter: every adapted module must exist in the model with matching in/out features; the
    /// modules it saved whole (modules_to_save: norms, embeddings, lm_head) replace the model's weights.
    /// </summary>
    /// <exception cref="PeftAdapterException">A module is missing from the model or its shapes disagree (named).</exception>
    public static void AttachSaved(Device device, IEnumerable<(string Name, object Layer)> layers, LoraAdapter adapter)
    {
        var all = layers.ToList();
        ReplaceSavedModules(all, adapter);
        var byName = all.Where(l => l.Layer is QuantizedLinear).ToDictionary(l => l.Name, l => (QuantizedLinear)l.Layer, StringComparer.Ordinal);
        adapter.Validate(byName.ToDictionary(e => e.Key, e => (e.Value.InFeatures, e.Value.OutFeatures)));
        foreach (LoraModuleWeights module in adapter.Modules.Values)
        {
            QuantizedLinear linear = byName[module.Module];
            linear.Lora?.Dispose();
            linear.Lora = new LoraSlot(device, module.A.ToSingle(), module.B.ToSingle(), module.Rank, module.InFeatures, module.OutFeatures, (float)adapter.Config.ScalingOf(module.Module), adapter.Config.LoraDropout);
        }
    }

    // A saved module's weight goes into the model's tensor, rounded to its dtype; the shapes must agree.
    private static void ReplaceSavedModules(List<(string Name, object Layer)> layers, LoraAdapter adapter)
    {
        foreach ((string path, TensorData saved) in adapter.SavedModules)
        {
            string module = path.EndsWith(".weight", StringComparison.Ordinal) ? path[..^".weight".Length] : path;
            DeviceTensor? target = layers.FirstOrDefault(l => l.Name == module).Layer switch
            {
                RmsNormLayer norm => norm.Weight,
                EmbeddingLayer embedding => embedding.Table,
                Linear linear => linear.Weight,
                _ => null,
            };
            if (target is null || target.ElementCount != saved.ElementCount)
            {
                throw new PeftAdapterException(adapter.SourcePath, path, target is null
                    ? "is saved whole (modules_to_save) but the model has no norm, embedding or lm_head of that name"
                    : $"has {saved.ElementCount} values; the model's is [{string.Join(", ", target.Shape)}]");
            }

            using DeviceTensor values = DeviceTensor.FromSingle(target.Device, saved.ToSingle(), target.Dtype, [.. target.Shape]);
            values.CopyTo(target);
        }
    }

    /// <summary>
    /// LoftQ: for every targeted 4-bit layer, reads its dense weight from <paramref name="dense"/>, alternates
    /// quantization and a rank-r SVD (<see cref="LoftQ"/>), replaces the layer's base with the adjusted one (same 4-bit
    /// type, block size and double quantization) and attaches the adapter that makes Q + s·B·A closest to W.
    /// </summary>
    /// <exception cref="CheckpointFormatException">A targeted weight is missing from the dense source or not dense (named).</exception>
    public static IReadOnlyList<string> AttachLoftQ(Device device, IEnumerable<(string Name, object Layer)> layers, LoraConfig config, IWeightSource dense, int iterations = 1)
    {
        var adapted = new List<string>();
        foreach ((string name, object layer) in layers)
        {
            if (layer is not QuantizedLinear linear || linear.Weight is null || !config.Targets(name))
            {
                continue;
            }

            string tensor = name + ".weight";
            WeightInfo info = dense.Require(tensor, linear.OutFeatures, linear.InFeatures);
            if (info.QuantType is not null)
            {
                throw new CheckpointFormatException(dense.Location, tensor, "is stored 4-bit; LoftQ needs the dense (bf16/f16/f32) weights");
            }

            int rank = config.RankOf(name);
            QuantState state = linear.Weight.State;
            var options = new QuantizationOptions(state.Type, state.BlockSize, state.IsDoubleQuantized);
            LoftQ.Result result = LoftQ.Initialize(dense.ReadSingle(tensor), linear.OutFeatures, linear.InFeatures, rank, config.ScalingOf(name), options, iterations, tensor);
            linear.ReplaceBase(DeviceQuantizedTensor.Upload(device, result.Base));
            linear.Lora?.Dispose();
            linear.Lora = new LoraSlot(device, result.A, result.B, rank, linear.InFeatures, linear.OutFeatures, (float)config.ScalingOf(name), config.LoraDropout);
            adapted.Add(name);
        }

        return adapted;
    }
}
