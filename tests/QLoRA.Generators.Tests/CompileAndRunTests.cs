using System.Reflection;
using System.Runtime.InteropServices;
using Microsoft.CodeAnalysis;
using QLoRA.Core;
using QLoRA.Core.Numerics;
using QLoRA.Core.SafeTensors;
using QLoRA.Runtime.Devices;
using QLoRA.Runtime.Layers;
using QLoRA.Runtime.Tensors;

namespace QLoRA.Generators.Tests;

/// <summary>Generated code compiled, loaded and run: a tiny model (hidden 64, 2 layers) bound to a checkpoint on the CPU accelerator.</summary>
public class CompileAndRunTests
{
    private static Assembly Build(string source = Models.TinyLlama)
    {
        (Compilation output, var diagnostics, _) = GeneratorHarness.Run(source);
        Assert.Empty(diagnostics);
        using var stream = new MemoryStream();
        var result = output.Emit(stream, cancellationToken: TestContext.Current.CancellationToken);
        Assert.True(result.Success, string.Join("\n", result.Diagnostics));
        return Assembly.Load(stream.ToArray());
    }

    private static byte[] Bf16(int count, int seed)
    {
        var rng = new Random(seed);
        return MemoryMarshal.AsBytes(Enumerable.Range(0, count).Select(_ => BFloat16.FromSingle((float)((rng.NextDouble() - 0.5) * 0.1))).ToArray().AsSpan()).ToArray();
    }

    private static string Checkpoint(long upProjRows = 128)
    {
        string dir = Directory.CreateTempSubdirectory("qlora-gen-").FullName;
        File.WriteAllText(Path.Combine(dir, "config.json"), """{"model_type":"llama","hidden_size":64,"intermediate_size":128,"num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,"vocab_size":100,"rms_norm_eps":1e-5}""");
        var tensors = new List<(SafeTensorSpec, ReadOnlyMemory<byte>)>();
        int seed = 0;
        void Add(string name, params long[] shape) => tensors.Add((new SafeTensorSpec(name, DType.BF16, shape), Bf16((int)shape.Aggregate(1L, (a, b) => a * b), ++seed)));
        Add("model.embed_tokens.weight", 100, 64);
        Add("model.norm.weight", 64);
        Add("lm_head.weight", 100, 64);
        for (int i = 0; i < 2; i++)
        {
            Add($"model.layers.{i}.input_layernorm.weight", 64);
            Add($"model.layers.{i}.self_attn.q_proj.weight", 64, 64);
            Add($"model.layers.{i}.mlp.up_proj.weight", upProjRows, 64);
            Add($"model.layers.{i}.mlp.down_proj.weight", 64, 128);
        }

        SafeTensorsWriter.Save(Path.Combine(dir, "model.safetensors"), tensors);
        return dir;
    }

    // Every tensor of a Llama-family checkpoint (hidden 64, 2 layers, 4 heads, 2 kv heads of 16).
    private static string FullCheckpoint()
    {
        string dir = Directory.CreateTempSubdirectory("qlora-gen-").FullName;
        File.WriteAllText(Path.Combine(dir, "config.json"), """{"model_type":"llama","hidden_size":64,"intermediate_size":128,"num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,"vocab_size":100,"rms_norm_eps":1e-5}""");
        var tensors = new List<(SafeTensorSpec, ReadOnlyMemory<byte>)>();
        int seed = 100;
        void Add(string name, params long[] shape) => tensors.Add((new SafeTensorSpec(name, DType.BF16, shape), Bf16((int)shape.Aggregate(1L, (a, b) => a * b), ++seed)));
        Add("model.embed_tokens.weight", 100, 64);
        Add("model.norm.weight", 64);
        Add("lm_head.weight", 100, 64);
        for (int i = 0; i < 2; i++)
        {
            string p = $"model.layers.{i}.";
            Add(p + "input_layernorm.weight", 64);
            Add(p + "post_attention_layernorm.weight", 64);
            Add(p + "self_attn.q_proj.weight", 64, 64);
            Add(p + "self_attn.k_proj.weight", 32, 64);
            Add(p + "self_attn.v_proj.weight", 32, 64);
            Add(p + "self_attn.o_proj.weight", 64, 64);
            Add(p + "mlp.gate_proj.weight", 128, 64);
            Add(p + "mlp.up_proj.weight", 128, 64);
            Add(p + "mlp.down_proj.weight", 64, 128);
        }

        SafeTensorsWriter.Save(Path.Combine(dir, "model.safetensors"), tensors);
        return dir;
    }

    [Fact]
    public void AUserNamedLlamaIsBoundToTheEngineRunsLikeTheBuiltInModelAndTrains()
    {
        Assembly assembly = Build(Models.UserLlama);
        Type model = assembly.GetType("Demo.Chatbot")!;
        string folder = FullCheckpoint();
        using Device device = Device.Cpu();
        using var loaded = (IDisposable)model.GetMethod("Load")!.Invoke(null, [device, folder, null])!;
        var engineModel = (QLoRA.Runtime.Engine.EngineModel)model.GetMethod("ToEngineModel")!.Invoke(loaded, [])!;
        int[] ids = [3, 17, 42, 0, 9];
        using var builtIn = QLoRA.Runtime.Models.LlamaForCausalLM.Load(device, folder);
        Assert.Equal(builtIn.Forward(ids), engineModel.Logits(ids)); // same weights, same kernels: the same bits

        var lora = QLoRA.Core.Peft.LoraConfig.Parse("""{"r": 4, "lora_alpha": 8, "target_modules": "all-linear"}""");
        using var trainer = new QLoRA.Runtime.Training.LoraTrainer(device, engineModel, lora,
            new QLoRA.Runtime.Training.TrainerOptions { MaxSteps = 2, LearningRate = 1e-2, WarmupRatio = 0 },
            new QLoRA.Runtime.Engine.EngineOptions(16));
        var batch = QLoRA.Runtime.Engine.PackedBatch.ForNextToken([[5, 6, 7, 8, 9, 10]]);
        double first = trainer.TrainStep([batch]).Loss;
        double second = trainer.TrainStep([batch]).Loss;
        Assert.True(second < first, $"{first} → {second}");
        Assert.Equal(14, trainer.ExportAdapter().Modules.Count);
        Assert.Contains(trainer.ExportAdapter().Modules.Keys, k => k == "model.layers.1.self_attn.o_proj"); // HF names, whatever the properties are called
    }

    [Fact]
    public void AModelTheEngineCannotRunGetsAWarningNamingWhatIsMissingAndExtra()
    {
        (_, var diagnostics) = GeneratorHarness.RunAll(Models.TinyLlama);
        Diagnostic d = Assert.Single(diagnostics);
        Assert.Equal("QLR0015", d.Id);
        Assert.Equal(DiagnosticSeverity.Warning, d.Severity);
        string message = d.GetMessage(System.Globalization.CultureInfo.InvariantCulture);
        Assert.Contains("LlamaBlock has no self_attn.k_proj (4-bit [Linear])", message);
        Assert.Contains("LlamaBlock has no post_attention_layernorm ([RmsNorm])", message);
        Assert.DoesNotContain("q_proj", message);
        (_, diagnostics) = GeneratorHarness.RunAll(Models.ConstantFp4);
        Assert.Contains("Probe.Head (head) is not part of a Llama-family model", Assert.Single(diagnostics).GetMessage(System.Globalization.CultureInfo.InvariantCulture));
        (_, diagnostics) = GeneratorHarness.RunAll(Models.UserLlama);
        Assert.Empty(diagnostics);
    }

    [Fact]
    public void GeneratedModelLoadsEveryLayerByCheckpointName()
    {
        Assembly assembly = Build();
        Type model = assembly.GetType("Demo.TinyLlama")!;
        using Device device = Device.Cpu();
        using var loaded = (IDisposable)model.GetMethod("Load")!.Invoke(null, [device, Checkpoint(), null])!;
        var layers = ((IEnumerable<(string Name, object Layer)>)model.GetMethod("EnumerateLayers")!.Invoke(loaded, [""])!).ToList();
        Assert.Equal(
            ["model.embed_tokens",
             "model.layers.0.input_layernorm", "model.layers.0.self_attn.q_proj", "model.layers.0.mlp.up_proj", "model.layers.0.mlp.down_proj",
             "model.layers.1.input_layernorm", "model.layers.1.self_attn.q_proj", "model.layers.1.mlp.up_proj", "model.layers.1.mlp.down_proj",
             "model.norm", "lm_head"],
            layers.Select(l => l.Name));
        var up = Assert.IsType<QuantizedLinear>(layers.Single(l => l.Name == "model.layers.1.mlp.up_proj").Layer);
        Assert.Equal((64, 128), (up.InFeatures, up.OutFeatures));
        Assert.Equal(64, up.Weight!.State.BlockSize);
        Assert.True(up.Weight.State.IsDoubleQuantized);
        var norm = Assert.IsType<RmsNormLayer>(layers.Single(l => l.Name == "model.norm").Layer);
        Assert.Equal(1e-5f, norm.Epsilon);
        Assert.Equal("tiny", model.GetField("WeightsName")!.GetValue(null));

        // The loaded q_proj computes with the checkpoint's weight (quantized on load): compare with the host dequantizer.
        var q = Assert.IsType<QuantizedLinear>(layers.Single(l => l.Name == "model.layers.0.self_attn.q_proj").Layer);
        var rng = new Random(3);
        float[] x = [.. Enumerable.Range(0, 64).Select(_ => (float)(rng.NextDouble() - 0.5))];
        using DeviceTensor tx = DeviceTensor.FromHost<float>(device, x, DType.F32, 1, 64);
        using DeviceTensor ty = DeviceTensor.Allocate(device, DType.F32, 1, 64);
        q.Forward(tx, ty);
        using DeviceTensor w = DeviceTensor.Allocate(device, DType.F32, 64, 64);
        q.Weight!.DequantizeToF32(w.View<float>());
        float[] wv = w.ToHost<float>(), y = ty.ToHost<float>();
        for (int o = 0; o < 64; o++)
        {
            double expected = Enumerable.Range(0, 64).Sum(i => (double)x[i] * wv[(o * 64) + i]);
            Assert.True(Math.Abs(y[o] - expected) <= 1e-5, $"y[{o}] {y[o]} vs {expected}");
        }
    }

    [Fact]
    public void FootprintAndPeftKeysFollowTheDefinition()
    {
        Type model = Build().GetType("Demo.TinyLlama")!;
        var dims = new QLoRA.Modeling.ModelDimensions(QLoRA.Core.HuggingFace.HfModelConfig.Load(Path.Combine(Checkpoint(), "config.json")));
        long parameters = (long)model.GetMethod("ParameterCount")!.Invoke(null, [dims])!;
        long bytes = (long)model.GetMethod("WeightBytes")!.Invoke(null, [dims])!;
        long bf16 = (long)model.GetMethod("Bf16WeightBytes")!.Invoke(null, [dims])!;
        // By hand: embed 100·64 + lm_head 64·100 + norm 64 + 2 × (norm 64 + q 64·64 + up 64·128 + down 128·64).
        Assert.Equal(53952, parameters);
        Assert.Equal(2 * parameters, bf16);
        // 4-bit layers: codes n/2 + double-quantized absmax (n/64 codes, 4 bytes per 256 of them, the 1 KiB map, the offset).
        long Quantized(long n) => (n / 2) + (n / 64) + (4 * (((n / 64) + 255) / 256)) + 1024 + 4;
        Assert.Equal((2 * 12800) + 128 + (2 * (128 + Quantized(4096) + (2 * Quantized(8192)))), bytes);

        var keys = ((IEnumerable<(string LoraA, string LoraB)>)model.GetMethod("PeftKeys")!.Invoke(null, [dims])!).ToList();
        Assert.Equal(4, keys.Count);
        Assert.Equal(("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"), keys[0]);
        Assert.Equal("base_model.model.model.layers.1.mlp.up_proj.lora_B.weight", keys[3].LoraB);
    }

    [Fact]
    public void ConstantModelsGetFootprintConstantsEqualToTheMethods()
    {
        (Compilation output, var diagnostics, _) = GeneratorHarness.Run(Models.ConstantFp4);
        Assert.Empty(diagnostics);
        using var stream = new MemoryStream();
        Assert.True(output.Emit(stream, cancellationToken: TestContext.Current.CancellationToken).Success);
        Type probe = Assembly.Load(stream.ToArray()).GetType("Probe")!;
        var dims = new QLoRA.Modeling.ModelDimensions(new System.Text.Json.Nodes.JsonObject(), "none");
        Assert.Equal(2048L + 64, probe.GetField("DeclaredParameterCount")!.GetValue(null));
        Assert.Equal(probe.GetMethod("WeightBytes")!.Invoke(null, [dims]), probe.GetField("DeclaredWeightBytes")!.GetValue(null));
        Assert.Equal((2048L / 2) + (4 * (2048 / 32)) + (2 * 64), probe.GetField("DeclaredWeightBytes")!.GetValue(null)); // FP4 codes + f32 absmax per 32 + bf16 norm
        Assert.Equal(probe.GetMethod("Bf16WeightBytes")!.Invoke(null, [dims]), probe.GetField("DeclaredBf16WeightBytes")!.GetValue(null));
    }

    [Fact]
    public void AWrongShapeInTheCheckpointNamesTheTensorAndBothShapes()
    {
        Type model = Build().GetType("Demo.TinyLlama")!;
        using Device device = Device.Cpu();
        var e = Assert.Throws<TargetInvocationException>(() => model.GetMethod("Load")!.Invoke(null, [device, Checkpoint(upProjRows: 96), null]));
        var inner = Assert.IsType<CheckpointFormatException>(e.InnerException);
        Assert.Equal("model.layers.0.mlp.up_proj.weight", inner.ItemName);
        Assert.Contains("has shape [96, 64] but the model expects [128, 64]", inner.Message);
    }
}
