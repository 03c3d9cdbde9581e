using QLoRA.Core.SafeTensors;

namespace QLoRA.Core.Peft;

/// <summary>One adapted module's matrices: A [r, in] and B [out, r].</summary>
/// <param name="Module">Module path relative to the base model, e.g. <c>model.layers.0.self_attn.q_proj</c>.</param>
/// <param name="A">lora_A.weight, [r, in].</param>
/// <param name="B">lora_B.weight, [out, r].</param>
public sealed record LoraModuleWeights(string Module, TensorData A, TensorData B)
{
    /// <summary>Rank r.</summary>
    public int Rank => (int)A.Shape[0];

    /// <summary>Input features.</summary>
    public int InFeatures => (int)A.Shape[1];

    /// <summary>Output features.</summary>
    public int OutFeatures => (int)B.Shape[0];
}

/// <summary>
/// A PEFT LoRA adapter folder: <c>adapter_config.json</c> and <c>adapter_model.safetensors</c> with keys
/// <c>base_model.model.&lt;module&gt;.lora_A.weight</c> / <c>lora_B.weight</c>, plus whole-module weights for
/// modules_to_save (<c>base_model.model.&lt;module&gt;.weight</c>).
/// </summary>
public sealed class LoraAdapter
{
    /// <summary>Weights file name in an adapter folder.</summary>
    public const string WeightsFileName = "adapter_model.safetensors";

    /// <summary>Prefix PEFT puts before module paths in saved keys.</summary>
    public const string KeyPrefix = "base_model.model.";

    /// <summary>Creates an adapter after validating it (see <see cref="Validate"/>).</summary>
    /// <exception cref="PeftAdapterException">The weights disagree with the config.</exception>
    public LoraAdapter(LoraConfig config, IEnumerable<LoraModuleWeights> modules, IReadOnlyDictionary<string, TensorData>? savedModules = null, string? sourcePath = null)
    {
        Config = config;
        Modules = modules.ToDictionary(m => m.Module, StringComparer.Ordinal);
        SavedModules = savedModules ?? new Dictionary<string, TensorData>();
        SourcePath = sourcePath ?? "(in memory)";
        Validate();
    }

    /// <summary>The adapter config.</summary>
    public LoraConfig Config { get; }

    /// <summary>Adapted modules by module path.</summary>
    public IReadOnlyDictionary<string, LoraModuleWeights> Modules { get; }

    /// <summary>modules_to_save weights by parameter path (e.g. <c>lm_head.weight</c>).</summary>
    public IReadOnlyDictionary<string, TensorData> SavedModules { get; }

    /// <summary>Where this adapter was read from.</summary>
    public string SourcePath { get; }

    /// <summary>Reads an adapter folder.</summary>
    /// <exception cref="FileNotFoundException">A file is missing.</exception>
    /// <exception cref="PeftAdapterException">The config or weights are invalid, a tensor cannot be placed, or shapes disagree.</exception>
    public static LoraAdapter Load(string folder)
    {
        string full = Path.GetFullPath(folder);
        LoraConfig config = LoraConfig.Load(Path.Combine(full, LoraConfig.FileName));
        string weightsPath = Path.Combine(full, WeightsFileName);
        if (!File.Exists(weightsPath))
        {
            throw new FileNotFoundException($"{weightsPath}: no adapter weights (adapter_model.bin pickles are not read; save with safetensors).", weightsPath);
        }

        using SafeTensorsFile file = SafeTensorsFile.Open(weightsPath);
        var a = new Dictionary<string, TensorData>(StringComparer.Ordinal);
        var b = new Dictionary<string, TensorData>(StringComparer.Ordinal);
        var saved = new Dictionary<string, TensorData>(StringComparer.Ordinal);
        var unplaced = new List<string>();
        foreach (SafeTensorInfo info in file.Tensors)
        {
            var data = new TensorData(info.Dtype, info.Shape, file.GetBytes(info.Name).ToArray());
            string name = info.Name;
            if (!name.StartsWith(KeyPrefix, StringComparison.Ordinal))
            {
                unplaced.Add(name);
            }
            else if (name.EndsWith(".lora_A.weight", StringComparison.Ordinal))
            {
                a[name[KeyPrefix.Length..^".lora_A.weight".Length]] = data;
            }
            else if (name.EndsWith(".lora_B.weight", StringComparison.Ordinal))
            {
                b[name[KeyPrefix.Length..^".lora_B.weight".Length]] = data;
            }
            else if (name.EndsWith(".weight", StringComparison.Ordinal) && config.SavesModule(name[KeyPrefix.Length..^".weight".Length]))
            {
                saved[name[KeyPrefix.Length..]] = data;
            }
            else
            {
                unplaced.Add(name);
            }
        }

        if (unplaced.Count > 0)
        {
            throw new PeftAdapterException(weightsPath, unplaced[0], $"cannot be placed: expected 'base_model.model.<module>.lora_A.weight', '.lora_B.weight' or a modules_to_save weight; unplaced tensors: {string.Join(", ", unplaced.Take(10))}{(unplaced.Count > 10 ? ", …" : "")}");
        }

        foreach (string module in a.Keys.Except(b.Keys).Concat(b.Keys.Except(a.Keys)))
        {
            string has = a.ContainsKey(module) ? "lora_A" : "lora_B";
            throw new PeftAdapterException(weightsPath, KeyPrefix + module, $"has {has} but not its partner");
        }

        var modules = a.Keys.Order(StringComparer.Ordinal).Select(m => new LoraModuleWeights(m, a[m], b[m]));
        try
        {
            return new LoraAdapter(config, modules, saved, weightsPath);
        }
        catch (PeftAdapterException e) when (e.FilePath != weightsPath)
        {
            throw new PeftAdapterException(weightsPath, e.ItemName, e.Problem, e);
        }
    }

    /// <summary>
    /// Checks every module against the config (targeted, rank from rank_pattern, float dtypes, A/B shapes agree)
    /// and, when <paramref name="moduleShapes"/> is given, against the base model (module exists, in/out match).
    /// </summary>
    /// <param name="moduleShapes">Base model linear modules: path → (in, out).</param>
    /// <exception cref="PeftAdapterException">The first disagreement, naming the tensor and both shapes.</exception>
    public void Validate(IReadOnlyDictionary<string, (int In, int Out)>? moduleShapes = null)
    {
        foreach (LoraModuleWeights m in Modules.Values)
        {
            string keyA = KeyPrefix + m.Module + ".lora_A.weight";
            string keyB = KeyPrefix + m.Module + ".lora_B.weight";
            if (!Config.Targets(m.Module))
            {
                throw new PeftAdapterException(SourcePath, keyA, $"module '{m.Module}' is not targeted by target_modules in adapter_config.json");
            }

            foreach ((string key, TensorData t) in new[] { (keyA, m.A), (keyB, m.B) })
            {
                if (!t.Dtype.IsQuantizableFloat())
                {
                    throw new PeftAdapterException(SourcePath, key, $"is {t.Dtype}; LoRA weights must be F32, BF16 or F16");
                }

                if (t.Shape.Count != 2)
                {
                    throw new PeftAdapterException(SourcePath, key, $"has shape {t.ShapeText}; a 2-D matrix is required");
                }
            }

            int rank = Config.RankOf(m.Module);
            if (m.A.Shape[0] != rank || m.B.Shape[1] != rank)
            {
                throw new PeftAdapterException(SourcePath, keyA, $"shapes A {m.A.ShapeText} and B {m.B.ShapeText} disagree with rank {rank} from adapter_config.json (r / rank_pattern)");
            }

            if (moduleShapes is not null)
            {
                if (!moduleShapes.TryGetValue(m.Module, out (int In, int Out) shape))
                {
                    throw new PeftAdapterException(SourcePath, keyA, $"module '{m.Module}' does not exist in the base model");
                }

                if (m.A.Shape[1] != shape.In || m.B.Shape[0] != shape.Out)
                {
                    throw new PeftAdapterException(SourcePath, keyA, $"A {m.A.ShapeText} and B {m.B.ShapeText} do not fit module '{m.Module}' with in {shape.In}, out {shape.Out} (expected A [{rank}, {shape.In}], B [{shape.Out}, {rank}])");
                }
            }
        }
    }

    /// <summary>Writes the folder as PEFT does: adapter_model.safetensors, adapter_config.json and a README.md model card. Each file is written atomically.</summary>
    public void Save(string folder)
    {
        string full = Path.GetFullPath(folder);
        Directory.CreateDirectory(full);
        var tensors = new List<(SafeTensorSpec, ReadOnlyMemory<byte>)>();
        foreach (LoraModuleWeights m in Modules.Values)
        {
            tensors.Add((new SafeTensorSpec(KeyPrefix + m.Module + ".lora_A.weight", m.A.Dtype, m.A.Shape), m.A.Data));
            tensors.Add((new SafeTensorSpec(KeyPrefix + m.Module + ".lora_B.weight", m.B.Dtype, m.B.Shape), m.B.Data));
        }

        foreach ((string name, TensorData t) in SavedModules)
        {
            tensors.Add((new SafeTensorSpec(KeyPrefix + name, t.Dtype, t.Shape), t.Data));
        }

        SafeTensorsWriter.Save(Path.Combine(full, WeightsFileName), tensors, new Dictionary<string, string> { ["format"] = "pt" });
        AtomicFile.WriteAllText(Path.Combine(full, LoraConfig.FileName), Config.ToJson());
        string readme = Path.Combine(full, "README.md");
        if (!File.Exists(readme))
        {
            AtomicFile.WriteAllText(readme, $"---\nbase_model: {Config.BaseModelNameOrPath}\nlibrary_name: peft\n---\n\n# LoRA adapter\n\nTrained with QLoRA.Sdk (r={Config.R}, lora_alpha={Config.LoraAlpha}).\n");
        }
    }
}
