using System.Runtime.InteropServices;
using QLoRA.Core;
using QLoRA.Core.BitsAndBytes;
using QLoRA.Core.Numerics;
using QLoRA.Core.Quantization;
using QLoRA.Core.SafeTensors;
using QLoRA.Core.Weights;
using QLoRA.Runtime.Layers;
using QLoRA.Runtime.Tensors;

namespace QLoRA.Runtime.Tests;

/// <summary>Layers built from a checkpoint by name: dense bf16, bitsandbytes 4-bit, quantize-on-load, shape errors.</summary>
public abstract class LayerLoadingTests<TDevice>(TDevice fixture) : IClassFixture<TDevice>
    where TDevice : DeviceFixture
{
    private static float[] Random(int count, int seed, double scale = 1)
    {
        var rng = new Random(seed);
        return [.. Enumerable.Range(0, count).Select(_ => (float)(((rng.NextDouble() * 2) - 1) * scale))];
    }

    private static byte[] Bf16Bytes(float[] values) => MemoryMarshal.AsBytes(values.Select(BFloat16.FromSingle).ToArray().AsSpan()).ToArray();

    private static (string Path, QuantizedTensor Q, float[] Dense, float[] Norm, float[] Embed) Checkpoint()
    {
        float[] qWeights = Random(16 * 32, 1, 0.1), dense = Random(16 * 32, 2, 0.1), norm = Random(32, 3), embed = Random(10 * 32, 4);
        QuantizedTensor q = QuantizedTensor.Quantize(qWeights.Select(BFloat16.FromSingle).ToArray(), [16, 32]);
        var entries = BnbFourBitTensor.Entries("model.layers.0.self_attn.q_proj.weight", q).ToList();
        entries.Add((new SafeTensorSpec("model.layers.0.self_attn.k_proj.weight", DType.BF16, [16, 32]), Bf16Bytes(dense)));
        entries.Add((new SafeTensorSpec("model.norm.weight", DType.BF16, [32]), Bf16Bytes(norm)));
        entries.Add((new SafeTensorSpec("model.embed_tokens.weight", DType.BF16, [10, 32]), Bf16Bytes(embed)));
        string path = Path.Combine(Directory.CreateTempSubdirectory("qlora-layers-").FullName, "model.safetensors");
        SafeTensorsWriter.Save(path, entries);
        return (path, q, [.. dense.Select(v => BFloat16.FromSingle(v).ToSingle())], [.. norm.Select(v => BFloat16.FromSingle(v).ToSingle())], [.. embed.Select(v => BFloat16.FromSingle(v).ToSingle())]);
    }

    [Fact]
    public void LayersLoadByCheckpointNameAndComputeWithTheStoredValues()
    {
        (string path, QuantizedTensor q, float[] dense, float[] norm, float[] embed) = Checkpoint();
        using CheckpointWeightSource source = CheckpointWeightSource.Open(path);
        Assert.Equal(QuantType.Nf4, source.Describe("model.layers.0.self_attn.q_proj.weight")!.QuantType);
        Assert.Equal([16L, 32], source.Describe("model.layers.0.self_attn.q_proj.weight")!.Shape);
        Devices.Device device = fixture.Device;

        using QuantizedLinear stored = QuantizedLinear.Load(device, source, "model.layers.0.self_attn.q_proj.weight", 32, 16);
        // The stored codes and statistics, not a requantization: every value as the host dequantizes the file's tensor.
        Assert.Equal(Bits(q.DequantizeToSingle()), Bits(DequantizedOnDevice(stored)));

        using QuantizedLinear onLoad = QuantizedLinear.Load(device, source, "model.layers.0.self_attn.k_proj.weight", 32, 16);
        QuantizedTensor expected = QuantizedTensor.Quantize(dense, [16, 32]);
        Assert.Equal(Bits(expected.DequantizeToSingle()), Bits(DequantizedOnDevice(onLoad))); // quantized on load with QLoRA's defaults

        using Linear linear = Linear.Load(device, source, "model.layers.0.self_attn.k_proj.weight", 32, 16);
        Assert.Equal(dense, linear.Weight.ToHost<float>());
        using RmsNormLayer rms = RmsNormLayer.Load(device, source, "model.norm.weight", 32, 1e-5f);
        Assert.Equal(norm, rms.Weight.ToHost<float>());
        using EmbeddingLayer embedding = EmbeddingLayer.Load(device, source, "model.embed_tokens.weight", 10, 32);
        using DeviceTensor y = DeviceTensor.Allocate(device, DType.F32, 2, 32);
        embedding.Forward([7, 2], y);
        Assert.Equal([.. embed[(7 * 32)..(8 * 32)], .. embed[(2 * 32)..(3 * 32)]], y.ToHost<float>());
    }

    // The layer's weight dequantized by the device kernel: codes × absmax as the device holds them, so a wrong code
    // or a wrong absmax (scaled, shifted, of another block) changes the values compared bit for bit above.
    private float[] DequantizedOnDevice(QuantizedLinear layer)
    {
        using DeviceTensor w = DeviceTensor.Allocate(fixture.Device, DType.F32, layer.OutFeatures, layer.InFeatures);
        layer.Weight!.DequantizeToF32(w.View<float>());
        return w.ToHost<float>();
    }

    private static int[] Bits(float[] values) => [.. values.Select(BitConverter.SingleToInt32Bits)];

    [Fact]
    public void WrongShapesAndMissingTensorsNameTheTensorAndBothShapes()
    {
        (string path, _, _, _, _) = Checkpoint();
        using CheckpointWeightSource source = CheckpointWeightSource.Open(path);
        var e = Assert.Throws<CheckpointFormatException>(() => QuantizedLinear.Load(fixture.Device, source, "model.layers.0.self_attn.q_proj.weight", 16, 32));
        Assert.Equal("model.layers.0.self_attn.q_proj.weight", e.ItemName);
        Assert.Contains("has shape [16, 32] but the model expects [32, 16]", e.Message);
        e = Assert.Throws<CheckpointFormatException>(() => RmsNormLayer.Load(fixture.Device, source, "model.layers.0.input_layernorm.weight", 32, 1e-5f));
        Assert.Contains("missing", e.Message);
        e = Assert.Throws<CheckpointFormatException>(() => Linear.Load(fixture.Device, source, "model.layers.0.self_attn.q_proj.weight", 32, 16));
        Assert.Contains("stored 4-bit", e.Message);
        e = Assert.Throws<CheckpointFormatException>(() => QuantizedLinear.Load(fixture.Device, source, "model.layers.0.self_attn.q_proj.weight", 32, 16, new QuantizationOptions(QuantType.Fp4, 128)));
        Assert.Contains("is stored nf4 (block 64) but the model declares fp4 (block 128)", e.Message);
    }
}

/// <summary><see cref="LayerLoadingTests{TDevice}"/> on the CPU accelerator with 2-lane warps.</summary>
public sealed class LayerLoadingTestsOnCpu(CpuDeviceFixture fixture) : LayerLoadingTests<CpuDeviceFixture>(fixture);

/// <summary><see cref="LayerLoadingTests{TDevice}"/> on the CPU accelerator with 32-lane warps.</summary>
public sealed class LayerLoadingTestsOnCpuWarp32(CpuWarp32DeviceFixture fixture) : LayerLoadingTests<CpuWarp32DeviceFixture>(fixture);

/// <summary><see cref="LayerLoadingTests{TDevice}"/> on CUDA (skipped without a CUDA device).</summary>
public sealed class LayerLoadingTestsOnCuda(CudaDeviceFixture fixture) : LayerLoadingTests<CudaDeviceFixture>(fixture);
