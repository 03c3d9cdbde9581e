using QLoRA.Core.Peft;
using QLoRA.Core.SafeTensors;

namespace QLoRA.Core.Tests.Peft;

public class LoraAdapterTests
{
    private static LoraConfig Config => LoraConfig.Parse(LoraConfigTests.Peft021.Replace("\"modules_to_save\": null", "\"modules_to_save\": [\"lm_head\"]"));

    private static LoraModuleWeights Module(string name, int rank, int inFeatures, int outFeatures, int seed, bool bf16 = true)
    {
        float[] a = TestSupport.Normal(rank * inFeatures, seed, 0.1);
        float[] b = TestSupport.Normal(outFeatures * rank, seed + 1, 0.1);
        return bf16
            ? new LoraModuleWeights(name, TensorData.FromSingleAsBFloat16(a, rank, inFeatures), TensorData.FromSingleAsBFloat16(b, outFeatures, rank))
            : new LoraModuleWeights(name, TensorData.FromSingle(a, rank, inFeatures), TensorData.FromSingle(b, outFeatures, rank));
    }

    private static LoraAdapter Sample() => new(Config,
    [
        Module("model.layers.0.self_attn.q_proj", 8, 64, 64, 1),
        Module("model.layers.0.self_attn.v_proj", 16, 64, 16, 3, bf16: false),
        Module("model.layers.1.self_attn.v_proj", 4, 64, 16, 5),
        Module("model.layers.1.mlp.down_proj", 16, 128, 64, 7),
    ],
    new Dictionary<string, TensorData> { ["lm_head.weight"] = TensorData.FromSingleAsBFloat16(TestSupport.Normal(100 * 64, 9), 100, 64) });

    [Fact]
    public void SaveWritesPeftKeysAndLoadReadsThemBackExactly()
    {
        string dir = TestSupport.TempDir();
        LoraAdapter adapter = Sample();
        adapter.Save(dir);
        Assert.True(File.Exists(Path.Combine(dir, "adapter_config.json")));
        Assert.True(File.Exists(Path.Combine(dir, "README.md")));
        using (SafeTensorsFile file = SafeTensorsFile.Open(Path.Combine(dir, "adapter_model.safetensors")))
        {
            Assert.Contains("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", file.Tensors.Select(t => t.Name));
            Assert.Contains("base_model.model.model.layers.1.mlp.down_proj.lora_B.weight", file.Tensors.Select(t => t.Name));
            Assert.Contains("base_model.model.lm_head.weight", file.Tensors.Select(t => t.Name));
            Assert.Equal(9, file.Tensors.Count);
            Assert.Equal("pt", file.Metadata["format"]);
        }

        LoraAdapter back = LoraAdapter.Load(dir);
        Assert.Equal(adapter.Modules.Keys.Order(), back.Modules.Keys.Order());
        foreach (LoraModuleWeights m in adapter.Modules.Values)
        {
            LoraModuleWeights r = back.Modules[m.Module];
            Assert.Equal(m.A.Dtype, r.A.Dtype);
            Assert.Equal(m.A.Shape, r.A.Shape);
            Assert.Equal(m.A.Data, r.A.Data);
            Assert.Equal(m.B.Data, r.B.Data);
            Assert.Equal(m.A.ToSingle(), r.A.ToSingle());
        }

        Assert.Equal(adapter.SavedModules["lm_head.weight"].Data, back.SavedModules["lm_head.weight"].Data);
        Assert.Equal(4, back.Modules["model.layers.1.self_attn.v_proj"].Rank);
        Assert.Equal(2.0, back.Config.ScalingOf("model.layers.1.mlp.down_proj"));
    }

    private static string WriteRaw(LoraConfig config, params (string Name, TensorData Data)[] tensors)
    {
        string dir = TestSupport.TempDir();
        File.WriteAllText(Path.Combine(dir, "adapter_config.json"), config.ToJson());
        SafeTensorsWriter.Save(Path.Combine(dir, "adapter_model.safetensors"), tensors.Select(t => (new SafeTensorSpec(t.Name, t.Data.Dtype, t.Data.Shape), (ReadOnlyMemory<byte>)t.Data.Data)));
        return dir;
    }

    private static TensorData Random(int seed, params long[] shape) =>
        TensorData.FromSingle(TestSupport.Normal((int)shape.Aggregate(1L, (a, b) => a * b), seed), shape);

    [Fact]
    public void UnplaceableTensorsAreReportedByName()
    {
        string dir = WriteRaw(Config,
            ("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", Random(1, 8, 64)),
            ("base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight", Random(2, 64, 8)),
            ("base_model.model.model.embed_tokens.lora_embedding_A", Random(3, 16, 100)),
            ("model.layers.0.mlp.gate_proj.weight", Random(4, 4, 4)));
        var e = Assert.Throws<PeftAdapterException>(() => LoraAdapter.Load(dir));
        Assert.Contains("lora_embedding_A", e.Message);
        Assert.Contains("model.layers.0.mlp.gate_proj.weight", e.Message);
        Assert.EndsWith("adapter_model.safetensors", e.FilePath);
    }

    [Fact]
    public void ALoneMatrixIsReported()
    {
        string dir = WriteRaw(Config, ("base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight", Random(1, 16, 64)));
        var e = Assert.Throws<PeftAdapterException>(() => LoraAdapter.Load(dir));
        Assert.Equal("base_model.model.model.layers.0.self_attn.k_proj", e.ItemName);
        Assert.Contains("lora_A but not its partner", e.Message);
    }

    [Fact]
    public void RanksMustFollowRankPattern()
    {
        // q_proj has rank 8 by rank_pattern; a rank-16 pair is wrong.
        string dir = WriteRaw(Config,
            ("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", Random(1, 16, 64)),
            ("base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight", Random(2, 64, 16)));
        var e = Assert.Throws<PeftAdapterException>(() => LoraAdapter.Load(dir));
        Assert.Contains("rank 8", e.Message);
        Assert.Contains("[16, 64]", e.Message);
    }

    [Fact]
    public void ModulesOutsideTargetModulesAreReported()
    {
        LoraConfig onlyQ = LoraConfig.Parse("""{"r": 4, "target_modules": ["q_proj"]}""");
        string dir = WriteRaw(onlyQ,
            ("base_model.model.model.layers.0.mlp.up_proj.lora_A.weight", Random(1, 4, 64)),
            ("base_model.model.model.layers.0.mlp.up_proj.lora_B.weight", Random(2, 128, 4)));
        var e = Assert.Throws<PeftAdapterException>(() => LoraAdapter.Load(dir));
        Assert.Contains("not targeted", e.Message);
    }

    [Fact]
    public void ValidationAgainstTheBaseModelNamesBothShapes()
    {
        LoraAdapter adapter = Sample();
        var shapes = new Dictionary<string, (int, int)>
        {
            ["model.layers.0.self_attn.q_proj"] = (64, 64),
            ["model.layers.0.self_attn.v_proj"] = (64, 16),
            ["model.layers.1.self_attn.v_proj"] = (64, 16),
            ["model.layers.1.mlp.down_proj"] = (128, 64),
        };
        adapter.Validate(shapes);
        shapes["model.layers.1.mlp.down_proj"] = (256, 64);
        var e = Assert.Throws<PeftAdapterException>(() => adapter.Validate(shapes));
        Assert.Contains("A [16, 128]", e.Message);
        Assert.Contains("in 256, out 64", e.Message);
        shapes.Remove("model.layers.1.mlp.down_proj");
        e = Assert.Throws<PeftAdapterException>(() => adapter.Validate(shapes));
        Assert.Contains("does not exist in the base model", e.Message);
    }

    [Fact]
    public void NonFloatWeightsAreRejected()
    {
        var bad = new LoraModuleWeights("model.layers.0.self_attn.k_proj", new TensorData(DType.I32, [16, 4], new byte[256]), Random(1, 4, 16));
        Assert.Throws<PeftAdapterException>(() => new LoraAdapter(Config, [bad]));
    }

    [Fact]
    public void MissingFilesAreNamed()
    {
        string dir = TestSupport.TempDir();
        Assert.Throws<FileNotFoundException>(() => LoraAdapter.Load(dir));
        File.WriteAllText(Path.Combine(dir, "adapter_config.json"), Config.ToJson());
        var e = Assert.Throws<FileNotFoundException>(() => LoraAdapter.Load(dir));
        Assert.Contains("adapter_model.safetensors", e.Message);
    }
}
