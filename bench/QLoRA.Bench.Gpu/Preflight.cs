using System.Diagnostics;
using System.Text.Json;
using QLoRA.Core;
using QLoRA.Modeling;
using QLoRA.Runtime.Devices;
using QLoRA.Runtime.Engine;
using QLoRA.Runtime.Generation;
using QLoRA.Runtime.Models;
using QLoRA.Runtime.Ops;
using QLoRA.Runtime.Tensors;
using Device = QLoRA.Runtime.Devices.Device;

namespace QLoRA.Bench.Gpu;

/// <summary>
/// The GPU run's first seconds: what the device offers (driver, PTX ISA, cuBLAS, graphs, tensor cores) and three quick
/// end-to-end checks — a bf16 GEMM by every path against float64, greedy decoding of a small random Llama with CUDA graphs
/// on and off (same tokens, graphs captured), and one QLoRA training step (finite loss near ln(vocab)). A GPU session
/// is short: when this fails, the long benchmarks would measure a fallback or a broken kernel, so the run stops here.
///   dotnet QLoRA.Bench.Gpu.dll preflight [--small]     exit 0: all good; 3: no CUDA device; 4: a check failed
/// </summary>
internal static class Preflight
{
    public static int Run(string[] args, Device device)
    {
        bool small = args.Contains("--small");
        DeviceCapabilities caps = device.Capabilities;
        Console.WriteLine(caps);
        var checks = new List<Dictionary<string, object>>();
        void Check(string name, Func<(bool Ok, string Detail)> body)
        {
            var clock = Stopwatch.StartNew();
            (bool ok, string detail) = (false, "");
            try
            {
                (ok, detail) = body();
            }
            catch (Exception e)
            {
                detail = e.GetType().Name + ": " + e.Message.ReplaceLineEndings(" ");
            }

            Console.WriteLine($"{(ok ? "ok  " : "FAIL")} {name}: {detail} ({clock.Elapsed.TotalSeconds:F1} s)");
            checks.Add(new() { ["check"] = name, ["ok"] = ok, ["detail"] = detail, ["seconds"] = clock.Elapsed.TotalSeconds });
        }

        bool cuda = device.Kind == DeviceKind.Cuda;
        if (cuda)
        {
            Check("native paths", () => (caps.CublasLibrary is not null && caps.CudaGraphs, $"cuBLAS {caps.CublasLibrary ?? "missing"}, graphs {(caps.CudaGraphs ? "yes" : "missing")}"));
        }

        foreach (GemmPath path in cuda ? [GemmPath.Cublas, GemmPath.TensorCore, GemmPath.Portable] : new[] { GemmPath.Auto })
        {
            Check($"bf16 GEMM ({path}) vs float64", () => Gemm(device, path));
        }

        Check("greedy decode, graphs on = off", () => Decode(device));
        Check("one QLoRA training step", () => Train(device));
        bool allOk = checks.All(c => (bool)c["ok"]);
        Console.WriteLine(JsonSerializer.Serialize(new Dictionary<string, object>
        {
            ["benchmark"] = "preflight", ["device"] = device.Description, ["cuda"] = cuda, ["driver"] = caps.DriverVersion ?? "", ["isa"] = caps.InstructionSet ?? "",
            ["cublas"] = caps.CublasLibrary ?? "", ["graphs"] = caps.CudaGraphs, ["ok"] = allOk && (cuda || small), ["checks"] = checks,
        }));
        return !cuda && !small ? 3 : allOk ? 0 : 4;
    }

    // C [96, 80] = A [96, 128] · Bᵀ ([80, 128]) in bf16 with f32 accumulation and one rounding: each element within a
    // bf16 unit (2⁻⁸ relative) of the float64 product of the same bf16 inputs, plus f32 summation error.
    private static (bool, string) Gemm(Device device, GemmPath path)
    {
        const int m = 96, n = 80, k = 128;
        using DeviceTensor a = RandomTensors.Create(device, DType.BF16, 1.0, 11, m, k);
        using DeviceTensor b = RandomTensors.Create(device, DType.BF16, 1.0, 12, n, k);
        using DeviceTensor c = DeviceTensor.Allocate(device, DType.F32, m, n);
        QLoRA.Runtime.Ops.Gemm.Multiply(a, b, c, transposeB: true, path: path);
        float[] av = a.ToSingle(), bv = b.ToSingle(), cv = c.ToSingle();
        double worst = 0;
        for (int i = 0; i < m; i++)
        {
            for (int j = 0; j < n; j++)
            {
                double reference = 0, magnitude = 0;
                for (int p = 0; p < k; p++)
                {
                    reference += (double)av[(i * k) + p] * bv[(j * k) + p];
                    magnitude += Math.Abs((double)av[(i * k) + p] * bv[(j * k) + p]);
                }

                worst = Math.Max(worst, Math.Abs(cv[(i * n) + j] - reference) / magnitude);
            }
        }

        // f32 output: only the summation's error, k·2⁻²⁴ of Σ|a·b| at worst.
        double bound = k * Math.Pow(2, -24);
        return (worst <= bound, $"worst |c − f64| / Σ|a·b| = {worst:E2} (bound {bound:E2})");
    }

    private static (bool, string) Decode(Device device)
    {
        var config = RandomWeights.Config("1b", small: true);
        using var source = new RandomWeights(config, seed: 3);
        (LlamaForCausalLM model, EngineModel engineModel) = RandomWeights.Load(device, config, source);
        using LlamaForCausalLM owned = model;
        var rng = new Random(4);
        GenerationRequest[] requests = [.. Enumerable.Range(0, 3).Select(i => new GenerationRequest([.. Enumerable.Range(0, 5 + (3 * i)).Select(_ => rng.Next(config.VocabSize))]) { MaxTokens = 12 })];
        int[][] Run(bool graphs, out int captured)
        {
            using var engine = new GenerationEngine(engineModel, new GenerationEngineOptions { MaxBatch = 3, MaxSequenceLength = 64, StepTokens = 64, CudaGraphs = graphs });
            int[][] tokens = [.. engine.GenerateBatch(requests).Select(r => r.Ids.ToArray())];
            captured = engine.CapturedGraphs;
            return tokens;
        }

        int[][] plain = Run(false, out _), withGraphs = Run(true, out int graphsCaptured);
        bool same = plain.Zip(withGraphs).All(p => p.First.SequenceEqual(p.Second));
        bool graphsExpected = device.Capabilities.CudaGraphs;
        return (same && (!graphsExpected || graphsCaptured > 0), $"3 sequences × 12 tokens {(same ? "identical" : "DIFFER")}; graphs captured: {graphsCaptured}");
    }

    private static (bool, string) Train(Device device)
    {
        var config = RandomWeights.Config("1b", small: true);
        using var source = new RandomWeights(config, seed: 5);
        (LlamaForCausalLM model, EngineModel engineModel) = RandomWeights.Load(device, config, source);
        using LlamaForCausalLM owned = model;
        var lora = QLoRA.Core.Peft.LoraConfig.Parse("""{"r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": "all-linear"}""");
        var options = new QLoRA.Runtime.Training.TrainerOptions { MaxSteps = 2, LearningRate = 1e-3, WarmupRatio = 0, GradientAccumulation = 1 };
        using var trainer = new QLoRA.Runtime.Training.LoraTrainer(device, engineModel, lora, options, new EngineOptions(128, true, MaxMicroBatches: 1));
        var rng = new Random(6);
        PackedBatch batch = PackedBatch.ForNextToken([.. Enumerable.Range(0, 2).Select(_ => Enumerable.Range(0, 64).Select(_ => rng.Next(config.VocabSize)).ToArray())]);
        double loss = trainer.TrainStep([batch]).Loss;
        // Random weights of scale 0.02 give nearly uniform logits: the loss is close to ln(vocab).
        double uniform = Math.Log(config.VocabSize);
        return (double.IsFinite(loss) && Math.Abs(loss - uniform) < 0.5, $"loss {loss:F3} (ln vocab = {uniform:F3})");
    }
}
