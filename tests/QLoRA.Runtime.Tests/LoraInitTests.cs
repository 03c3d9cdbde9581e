using QLoRA.Core.Peft;
using QLoRA.Runtime.Engine;
using QLoRA.Runtime.Layers;
using QLoRA.Runtime.Models;

namespace QLoRA.Runtime.Tests;

/// <summary>New adapters by PEFT's init_lora_weights: the default, gaussian and false, and a method that cannot be used.</summary>
public sealed class LoraInitTests(CpuDeviceFixture fixture) : IClassFixture<CpuDeviceFixture>
{
    private static (float[] A, float[] B) Init(LlamaForCausalLM model, CpuDeviceFixture fixture, string init)
    {
        var config = LoraConfig.Parse($$"""{"r": 8, "lora_alpha": 16, "target_modules": ["up_proj"], "init_lora_weights": {{init}}}""");
        IReadOnlyList<string> adapted = LoraAttachment.AttachNew(fixture.Device, EngineModel.Of(model).Projections().Select(p => (p.Name, (object)p.Layer)), config, seed: 4);
        Assert.Equal(2, adapted.Count);
        LoraSlot slot = model.Layers[0].UpProj.Lora!;
        return (slot.A.ToHost<float>(), slot.B.ToHost<float>());
    }

    [Fact]
    public void DefaultGaussianAndFalseInitializeAsPeftDoes()
    {
        (string folder, _) = TinyLlama.WriteCheckpoint();
        using LlamaForCausalLM model = LlamaForCausalLM.LoadModel(fixture.Device, folder);

        (float[] a, float[] b) = Init(model, fixture, "true");
        double bound = 1 / Math.Sqrt(TinyLlama.Hidden); // kaiming-uniform(a=√5) on [r, in]
        Assert.All(a, v => Assert.InRange(v, -bound, bound));
        Assert.True(a.Max() > 0.9 * bound && a.Min() < -0.9 * bound, "A must fill its range");
        Assert.All(b, v => Assert.Equal(0f, v));

        (a, b) = Init(model, fixture, "\"gaussian\"");
        double mean = a.Average(v => (double)v), std = Math.Sqrt(a.Average(v => ((double)v - mean) * ((double)v - mean)));
        Assert.InRange(std, 0.9 / 8, 1.1 / 8); // N(0, (1/r)²) with r = 8, over 512 samples
        Assert.InRange(mean, -3 * std / Math.Sqrt(a.Length), 3 * std / Math.Sqrt(a.Length));
        Assert.All(b, v => Assert.Equal(0f, v));

        (_, b) = Init(model, fixture, "false");
        Assert.Contains(b, v => v != 0); // B random too: the adapter changes the output from the start

        var e = Assert.Throws<PeftAdapterException>(() => Init(model, fixture, "\"pissa\""));
        Assert.Contains("init_lora_weights", e.Message);
        Assert.Contains("\"init_lora_weights\": \"gaussian\"", LoraConfig.Parse("""{"r": 8, "target_modules": ["q_proj"], "init_lora_weights": "gaussian"}""").ToJson());
    }
}
