using QLoRA.Core.Quantization;
using Device = QLoRA.Runtime.Devices.Device;

// GPU benchmark at llama-8b shapes: device copy bandwidth and the cuBLAS bf16 GEMM rate as references, then NF4
// dequantize and GEMV (shares of copy bandwidth), GEMMs (cuBLAS, ILGPU mma.sync and portable, fused NF4 vs dequantize +
// cuBLAS), attention forward/backward at seq 2048 and the fused cross-entropy at vocab 128256 (shares of the cuBLAS
// rate). Prints a table and one JSON record.
//   . .gpu/env.sh && dotnet .gpu/QLoRA.Bench.Gpu/QLoRA.Bench.Gpu.dll           (CUDA, full shapes)
//   dotnet run -c Release --project bench/QLoRA.Bench.Gpu -- --small            (any machine, small shapes)
//   dotnet QLoRA.Bench.Gpu.dll train [--shape 1b|8b] [--batch 1|4] [--seq 2048] [--small]  (QLoRA training tokens/s and peak memory)
//   dotnet QLoRA.Bench.Gpu.dll decode [--shape 1b|8b] [--batch 1,8,64] [--tokens 128] [--small] [--full-on-cpu]  (generation tokens/s, graphs on/off, ± LoRA; --full-on-cpu: full shapes on the CPU accelerator, minutes)
//   dotnet QLoRA.Bench.Gpu.dll preflight [--small]   (device capabilities and quick end-to-end checks; exit 3 without CUDA, 4 on a failed check)
//   dotnet QLoRA.Bench.Gpu.dll logits <hf-folder> <out.f32> [--dense] [--adapter DIR] <id> <id> ...   (our logits for tests/interop/*_parity.py)
//   dotnet QLoRA.Bench.Gpu.dll train-adapter <hf-folder> <out-dir> [--dense] [--steps N] [--rank R]  (our PEFT adapter for tests/interop/peft_parity.py)
if (args.Length >= 3 && args[0] == "logits")
{
    return QLoRA.Bench.Gpu.InteropCommands.Logits(args);
}

if (args.Length >= 3 && args[0] == "train-adapter")
{
    return QLoRA.Bench.Gpu.InteropCommands.TrainAdapter(args);
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
if (args.Length > 0 && args[0] == "preflight")
{
    return QLoRA.Bench.Gpu.Preflight.Run(args, device);
}

if (device.Kind != QLoRA.Runtime.Devices.DeviceKind.Cuda && !small && !args.Contains("--full-on-cpu"))
{
    // Full llama shapes on the CPU accelerator would run for many minutes: say so instead.
    Console.Error.WriteLine($"No CUDA device ({device.Description}): the full shapes need a GPU. Run with --small for small shapes on this machine (or --full-on-cpu to wait for the full ones).");
    return 2;
}

if (args.Length > 0 && args[0] == "train")
{
    return QLoRA.Bench.Gpu.TrainBenchmark.Run(args, device);
}

if (args.Length > 0 && args[0] == "decode")
{
    return QLoRA.Bench.Gpu.DecodeBenchmark.Run(args, device);
}

Console.WriteLine($"device: {device.Description}");
var report = new QLoRA.Bench.Gpu.BenchReport(device, small);
QLoRA.Bench.Gpu.Sections.Copy(report); // the reference every share needs: no point going on without it
int failed = 0;
foreach ((string name, Action<QLoRA.Bench.Gpu.BenchReport> section) in new (string, Action<QLoRA.Bench.Gpu.BenchReport>)[]
{
    ("4-bit", QLoRA.Bench.Gpu.Sections.FourBit),
    ("gemm", QLoRA.Bench.Gpu.Sections.Gemms),
    ("attention", QLoRA.Bench.Gpu.Sections.Attention),
    ("cross-entropy", QLoRA.Bench.Gpu.Sections.CrossEntropyLoss),
    ("optimizer", QLoRA.Bench.Gpu.Sections.Optimizers),
})
{
    try
    {
        section(report);
    }
    catch (Exception e) when (e is not OutOfMemoryException)
    {
        // One failing kernel must not cost the rest of a (scarce) GPU run: record it and go on.
        failed++;
        report.Add($"{name}: FAILED", "", double.NaN, "n/a", e.GetType().Name + ": " + e.Message.ReplaceLineEndings(" "));
        report.Summary[$"{name}_error"] = e.ToString();
    }
}

report.Print();
return failed == 0 ? 0 : 1;
