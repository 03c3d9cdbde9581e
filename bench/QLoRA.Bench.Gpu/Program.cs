using System.Diagnostics;
using System.Text.Json;
using ILGPU;
using ILGPU.Runtime;
using QLoRA.Core;
using QLoRA.Core.Quantization;
using QLoRA.Runtime.Devices;
using Device = QLoRA.Runtime.Devices.Device;
using QLoRA.Runtime.Ops;
using QLoRA.Runtime.Tensors;

// GPU benchmark: device copy bandwidth as the reference, then NF4 dequantize, NF4 GEMV and our GEMM at llama-8b
// shapes, each as a fraction of the copy bandwidth (or as TFLOP/s). Prints a table and one JSON record.
//   . .gpu/env.sh && dotnet .gpu/QLoRA.Bench.Gpu/QLoRA.Bench.Gpu.dll           (CUDA, full shapes)
//   dotnet run -c Release --project bench/QLoRA.Bench.Gpu -- --small            (any machine, small shapes)
//   dotnet QLoRA.Bench.Gpu.dll logits <hf-folder> <out.f32> <id> <id> ...   (writes our logits for tests/interop/llama_parity.py)
if (args.Length >= 3 && args[0] == "logits")
{
    using Device parityDevice = Device.Best();
    using var model = QLoRA.Runtime.Models.LlamaForCausalLM.LoadModel(parityDevice, args[1]);
    float[] logits = model.Forward([.. args.Skip(3).Select(int.Parse)]);
    File.WriteAllBytes(args[2], System.Runtime.InteropServices.MemoryMarshal.AsBytes(logits.AsSpan()).ToArray());
    Console.WriteLine($"device: {parityDevice.Description}; wrote {logits.Length} logits to {args[2]}");
    return 0;
}

//   dotnet QLoRA.Bench.Gpu.dll quantize <in.safetensors> <out.safetensors>   (bitsandbytes layout, for tests/interop/bnb_parity.py)
if (args.Length == 3 && args[0] == "quantize")
{
    using var input = QLoRA.Core.SafeTensors.SafeTensorsFile.Open(args[1]);
    var entries = new List<(QLoRA.Core.SafeTensors.SafeTensorSpec, ReadOnlyMemory<byte>)>();
    foreach (var info in input.Tensors)
    {
        var q = QuantizedTensor.Quantize(input.GetBytes(info.Name), info.Dtype, info.Shape, QuantizationOptions.Default, info.Name);
        entries.AddRange(QLoRA.Core.BitsAndBytes.BnbFourBitTensor.Entries(info.Name, q));
    }

    QLoRA.Core.SafeTensors.SafeTensorsWriter.Save(args[2], entries);
    Console.WriteLine($"quantized {input.Tensors.Count} tensors to {args[2]}");
    return 0;
}

bool small = args.Contains("--small");
using Device device = Device.Best();
Console.WriteLine($"device: {device.Description}");
var rows = new List<(string What, string Shape, double Seconds, string Rate, string Share)>();
var summary = new Dictionary<string, object> { ["device"] = device.Description, ["small"] = small };

// Reference: device-to-device copy (read + write).
long copyBytes = small ? 64L << 20 : 1L << 30;
using MemoryBuffer1D<byte, Stride1D.Dense> src = device.Accelerator.Allocate1D<byte>(copyBytes);
using MemoryBuffer1D<byte, Stride1D.Dense> dst = device.Accelerator.Allocate1D<byte>(copyBytes);
src.MemSetToZero();
double copy = Time(device, () => dst.View.CopyFrom(src.View), small ? 3 : 20);
double copyBandwidth = 2.0 * copyBytes / copy;
rows.Add(("device copy", $"{copyBytes >> 20} MiB", copy, $"{copyBandwidth / 1e12:F3} TB/s", "100%"));
summary["copy_tbps"] = copyBandwidth / 1e12;

// NF4 (double-quantized) dequantize to bf16 and GEMV, at the MLP shapes of llama-8b.
foreach ((int outF, int inF) in small ? new[] { (512, 1024) } : new[] { (14336, 4096), (4096, 14336), (4096, 4096), (128256, 4096) })
{
    var rng = new Random(1);
    float[] w = new float[(long)outF * inF];
    for (long i = 0; i < w.Length; i++)
    {
        w[i] = (float)((rng.NextDouble() - 0.5) * 0.05);
    }

    QuantizedTensor q = QuantizedTensor.Quantize(w, [outF, inF]);
    using DeviceQuantizedTensor dq = DeviceQuantizedTensor.Upload(device, q);
    long n = (long)outF * inF;
    long statBytes = q.State.Absmax.StorageBytes;
    using (DeviceTensor bf16 = DeviceTensor.Allocate(device, DType.BF16, outF, inF))
    {
        double t = Time(device, () => dq.DequantizeToBf16(bf16.View<ushort>()), small ? 3 : 20);
        double bytes = q.State.PackedBytes + statBytes + (2.0 * n);
        rows.Add(("NF4 dequantize → bf16", $"{outF}×{inF}", t, $"{bytes / t / 1e12:F3} TB/s", $"{100 * bytes / t / copyBandwidth:F1}%"));
        summary[$"dequant_{outF}x{inF}_share"] = bytes / t / copyBandwidth;
    }

    using DeviceTensor x = DeviceTensor.Allocate(device, DType.F32, 1, inF);
    using DeviceTensor y = DeviceTensor.Allocate(device, DType.F32, 1, outF);
    x.View<float>().MemSetToZero();
    double g = Time(device, () => dq.Gemv(x, y), small ? 3 : 50);
    double gemvBytes = q.State.PackedBytes + statBytes + (4.0 * inF) + (4.0 * outF);
    rows.Add(("NF4 GEMV, batch 1", $"{outF}×{inF}", g, $"{gemvBytes / g / 1e12:F3} TB/s", $"{100 * gemvBytes / g / copyBandwidth:F1}%"));
    summary[$"gemv_{outF}x{inF}_share"] = gemvBytes / g / copyBandwidth;
}

// Our portable float32 GEMM (cuBLAS comparison pending its interop).
int m = small ? 256 : 4096, k = small ? 256 : 4096, nn = small ? 256 : 4096;
using (DeviceTensor a = DeviceTensor.Allocate(device, DType.F32, m, k))
using (DeviceTensor b = DeviceTensor.Allocate(device, DType.F32, nn, k))
using (DeviceTensor c = DeviceTensor.Allocate(device, DType.F32, m, nn))
{
    a.View<float>().MemSetToZero();
    b.View<float>().MemSetToZero();
    double t = Time(device, () => Gemm.Multiply(a, b, c, transposeB: true), 3);
    double flops = 2.0 * m * nn * k;
    rows.Add(("GEMM f32 (ILGPU portable), x·Wᵀ", $"{m}×{nn}×{k}", t, $"{flops / t / 1e12:F2} TFLOP/s", "cuBLAS: pending"));
    summary["gemm_portable_tflops"] = flops / t / 1e12;
}

Console.WriteLine();
Console.WriteLine("| what | shape | time | rate | share of copy bandwidth |");
Console.WriteLine("| --- | --- | ---: | ---: | ---: |");
foreach (var r in rows)
{
    Console.WriteLine($"| {r.What} | {r.Shape} | {r.Seconds * 1e3:F3} ms | {r.Rate} | {r.Share} |");
}

Console.WriteLine(JsonSerializer.Serialize(summary));
return 0;

static double Time(Device device, Action action, int iterations)
{
    action();
    device.Synchronize();
    var times = new double[iterations];
    for (int i = 0; i < iterations; i++)
    {
        var sw = Stopwatch.StartNew();
        action();
        device.Synchronize();
        times[i] = sw.Elapsed.TotalSeconds;
    }

    Array.Sort(times);
    return times[iterations / 2];
}
