using System.Reflection;
using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Backends;
using ILGPU.Backends.EntryPoints;
using ILGPU.Backends.PTX;
using ILGPU.Runtime;
using ILGPU.Runtime.Cuda;
using QLoRA.Core;
using QLoRA.Core.Peft;
using QLoRA.Core.Quantization;
using QLoRA.Runtime.Devices;
using Device = QLoRA.Runtime.Devices.Device;
using QLoRA.Runtime.Engine;
using QLoRA.Runtime.Generation;
using QLoRA.Modeling;
using QLoRA.Runtime.Models;
using QLoRA.Runtime.Ops;
using QLoRA.Runtime.Tensors;
using QLoRA.Runtime.Training;

namespace QLoRA.Runtime.Tests;

/// <summary>
/// Every kernel instantiation the engine actually loads — training (each optimizer, dropout, checkpointing,
/// modules_to_save, a dense and a 4-bit base), generation (paged decode, sampling with every option, adapters) and both
/// tensor-core GEMMs, in each compute dtype — compiled for CUDA (sm_90, PTX ISA 8.0) on this machine without a GPU.
/// <see cref="PtxInspectionTests.EveryKernelCompilesForCuda"/> compiles each entry point once with one set of type
/// arguments; this compiles the ones really used: a type argument whose code the PTX backend cannot emit (a conversion, a
/// math function without an intrinsic) would otherwise first fail on the GPU, and cost that session its time.
/// </summary>
public class CudaCompileCoverageTests
{
    /// <summary>One loaded kernel instantiation and its PTX for sm_90 (null with the reason when it did not compile).</summary>
    internal sealed record CompiledKernelPtx(string Name, string? Ptx, string? Error);

    // The engine runs once per dtype and process; the compile test and the ptxas test share its kernels.
    private static readonly Dictionary<DType, Lazy<IReadOnlyList<CompiledKernelPtx>>> Compiled = new[] { DType.F32, DType.BF16, DType.F16 }
        .ToDictionary(d => d, d => new Lazy<IReadOnlyList<CompiledKernelPtx>>(() => CompileWhatTheEngineLoads(d)));

    [Theory]
    [InlineData(DType.F32)]
    [InlineData(DType.BF16)]
    [InlineData(DType.F16)]
    public void EveryKernelTheEngineLoadsCompilesForCuda(DType compute)
    {
        IReadOnlyList<CompiledKernelPtx> kernels = Compiled[compute].Value;
        var failures = kernels.Where(k => k.Error is not null || !k.Ptx!.Contains(".entry", StringComparison.Ordinal)).Select(k => $"{k.Name}: {k.Error ?? "no .entry in the PTX"}").ToList();
        Assert.True(failures.Count == 0, $"{failures.Count} of {kernels.Count} kernels do not compile for CUDA:\n{string.Join("\n", failures)}");

        // 64-bit integer division has no instruction on the GPU: each div/rem.s64 is a call of an ~80-instruction
        // subroutine. The kernels that do per-element or per-block work (4-bit decode, norms, attention, loss,
        // sampling) index with shifts and 32-bit row loops instead. Elsewhere divisions are once per tile (the GEMMs) or in
        // kernels that are a small share of a step (RoPE's per-pair index, the embedding gather and scatter).
        string[] perElement = ["Nf4GemvKernels.", "FusedDecodeKernels.Gemv", "FusedDecodeKernels.AddRmsNorm", "LoraDecodeKernels.", "MmaGemmKernels.", "DequantizeKernels.",
            "RmsNormKernels.", "CrossEntropyKernels.", "AttentionKernels.", "PagedAttentionKernels.", "SamplingKernels."];
        var divisions = kernels.Where(k => k.Ptx is not null && perElement.Any(p => k.Name.StartsWith(p, StringComparison.Ordinal)))
            .Select(k => (k.Name, Count: System.Text.RegularExpressions.Regex.Matches(k.Ptx!, @"\b(div|rem)\.[su]64\b").Count))
            .Where(k => k.Count > 0).Select(k => $"{k.Name}: {k.Count} 64-bit div/rem").ToList();
        Assert.True(divisions.Count == 0, $"64-bit integer division in per-element kernels:\n{string.Join("\n", divisions)}");
        Assert.Contains(kernels, k => k.Name.StartsWith("DequantizeKernels.ToBf16", StringComparison.Ordinal));
    }

    /// <summary>
    /// The same PTX through NVIDIA's assembler for sm_90 (what the driver's JIT does on the GPU): each must assemble,
    /// none may spill registers, and the GEMM, GEMV and decode kernels may not touch local memory at all (a stack
    /// frame there means per-thread arrays or inline-PTX operands left in memory, on the hottest loops).
    /// Skipped where ptxas is missing: tests/tools/fetch-ptxas.sh fetches it (CI does), or set QLORA_PTXAS.
    /// </summary>
    [Theory]
    [InlineData(DType.F32)]
    [InlineData(DType.BF16)]
    [InlineData(DType.F16)]
    public void EveryKernelTheEngineLoadsAssemblesForSm90WithoutSpills(DType compute)
    {
        string? ptxas = Ptxas.Find();
        if (ptxas is null)
        {
            Assert.Skip(Ptxas.Missing);
        }

        IReadOnlyList<CompiledKernelPtx> kernels = Compiled[compute].Value;
        var failures = new List<string>();
        foreach (CompiledKernelPtx kernel in kernels.Where(k => k.Ptx is not null))
        {
            Ptxas.Report report = Ptxas.Assemble(ptxas, kernel.Ptx!, "sm_90");
            if (report.Error is not null)
            {
                failures.Add($"{kernel.Name}: ptxas: {report.Error}");
                continue;
            }

            if (report.SpillBytes != 0)
            {
                failures.Add($"{kernel.Name}: {report.SpillBytes} bytes of register spills ({report.Registers} registers)");
            }

            bool hot = kernel.Name.Contains("Gemm", StringComparison.Ordinal) || kernel.Name.Contains("Gemv", StringComparison.Ordinal) || kernel.Name.StartsWith("FusedDecodeKernels", StringComparison.Ordinal);
            if (hot && report.StackBytes != 0)
            {
                failures.Add($"{kernel.Name}: {report.StackBytes} bytes of stack frame (local memory)");
            }
        }

        Assert.True(failures.Count == 0, $"{failures.Count} of {kernels.Count} kernels fail ptxas's checks:\n{string.Join("\n", failures)}");
    }

    /// <summary>The check can fail: ptxas refuses an mma.sync whose operand types disagree, and reads a clean kernel's resources.</summary>
    [Fact]
    public void PtxasRejectsBrokenInlinePtxAndReportsResources()
    {
        string? ptxas = Ptxas.Find();
        if (ptxas is null)
        {
            Assert.Skip(Ptxas.Missing);
        }

        CompiledKernelPtx mma = Compiled[DType.BF16].Value.First(k => k.Name.StartsWith("MmaGemmKernels.Gemm<DenseOperand`1,FourBitOperand`2", StringComparison.Ordinal));
        Ptxas.Report clean = Ptxas.Assemble(ptxas, mma.Ptx!, "sm_90");
        Assert.Null(clean.Error);
        Assert.InRange(clean.Registers, 16, 255);
        Assert.Equal(0, clean.StackBytes);

        const string Good = "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32";
        Assert.Contains(Good, mma.Ptx!);
        Ptxas.Report broken = Ptxas.Assemble(ptxas, mma.Ptx!.Replace(Good, "mma.sync.aligned.m16n8k16.row.col.f32.bf16.f16.f32", StringComparison.Ordinal), "sm_90");
        Assert.NotNull(broken.Error);
        Assert.Contains("mma", broken.Error, StringComparison.OrdinalIgnoreCase);

        // sm_70 has no bf16 mma.sync: the same clean kernel is refused for it.
        Assert.NotNull(Ptxas.Assemble(ptxas, mma.Ptx!.Replace(".target sm_90", ".target sm_70", StringComparison.Ordinal), "sm_70").Error);
    }

    private static IReadOnlyList<CompiledKernelPtx> CompileWhatTheEngineLoads(DType compute)
    {
        // The GPU schedules (not the CPU ones) on small emulated warps: the kernel instantiations a CUDA device loads.
        using Device device = Device.Cpu(4, 2, multiprocessors: 2, cpuSchedules: false);
        device.ComputeDtype = compute;
        RunTheEngine(device);

        // The tensor-core GEMMs need four 32-lane warps per group (on a GPU they serve the 4-bit prefill and training GEMMs).
        using Device warps = Device.Cpu(32, 4, multiprocessors: 1, cpuSchedules: false);
        warps.ComputeDtype = compute;
        RunTensorCoreGemms(warps);

        var kernels = device.LoadedKernels.Concat(warps.LoadedKernels).Select(Source).DistinctBy(k => k.Method).ToList();
        // Not vacuous: the workload reached the kernel families a GPU run uses, in this dtype's element codec.
        string[] families = [.. kernels.Select(k => k.Method.DeclaringType!.Name).Distinct()];
        foreach (string family in new[] { "Nf4GemvKernels", "AttentionKernels", "PagedAttentionKernels", "SamplingKernels", "AdamWKernels", "EightBitAdamWKernels", "RmsNormKernels", "CrossEntropyKernels", "DropoutKernels", compute == DType.F32 ? "GemmKernels" : "MmaGemmKernels" })
        {
            Assert.Contains(family, families);
        }

        string codec = compute switch { DType.BF16 => "Bf16Element", DType.F16 => "F16Element", _ => "F32Element" };
        Assert.Contains(kernels, k => k.Method.IsGenericMethod && k.Method.GetGenericArguments().Any(a => a.Name == codec));
        Assert.True(kernels.Count >= 25, $"only {kernels.Count} distinct kernels loaded");

        // Compiled as a CUDA device compiles them (the same context settings), for sm_90 with PTX ISA 8.0.
        using Context context = Context.Create(builder => KernelCompilation.Configure(builder.Default()));
        var backend = new PTXBackend(context, CudaArchitecture.SM_90, CudaInstructionSet.ISA_80, null!);
        var compiled = new List<CompiledKernelPtx>();
        foreach ((MethodInfo method, IndexType index, KernelSpecialization specialization) in kernels)
        {
            try
            {
                EntryPointDescription entry = index == IndexType.KernelConfig
                    ? EntryPointDescription.FromExplicitlyGroupedKernel(method)
                    : EntryPointDescription.FromImplicitlyGroupedKernel(method);
                string ptx = ((PTXCompiledKernel)backend.Compile(entry, specialization)).PTXAssembly;
                compiled.Add(new(Name(method), ptx, null));
                if (Environment.GetEnvironmentVariable("QLORA_PTX_DUMP") is { Length: > 0 } dump)
                {
                    // For reading the PTX (and ptxas -v / cuobjdump -sass of it) by hand: one file per kernel.
                    Directory.CreateDirectory(dump);
                    File.WriteAllText(Path.Combine(dump, $"{compute}-{compiled.Count:D3}.ptx"), $"// {Name(method)}\n{ptx}");
                }
            }
            catch (Exception e)
            {
                compiled.Add(new(Name(method), null, $"{e.GetType().Name}: {e.Message}"));
            }
        }

        return compiled;
    }

    private static (MethodInfo Method, IndexType Index, KernelSpecialization Specialization) Source(Delegate loaded)
    {
        Assert.True(KernelUtil.TryGetKernel(loaded, out Kernel? kernel), $"{loaded.Method} is not an ILGPU kernel launcher");
        CompiledKernel compiled = kernel!.CompiledKernel;
        return ((MethodInfo)compiled.SourceMethod, compiled.IndexType, compiled.Specialization);
    }

    private static string Name(MethodInfo m) =>
        $"{m.DeclaringType?.Name}.{m.Name}" + (m.IsGenericMethod ? $"<{string.Join(",", m.GetGenericArguments().Select(a => a.Name))}>" : "");

    private static void RunTheEngine(Device device)
    {
        int[][] sequences = [[5, 12, 33, 7, 41, 2, 19, 28], [3, 46, 10, 37]];
        PackedBatch batch = PackedBatch.ForNextToken(sequences);
        (string folder, _) = TinyLlama.WriteCheckpoint();
        var lora = LoraConfig.Parse("""{"r": 4, "lora_alpha": 8, "lora_dropout": 0.1, "target_modules": "all-linear"}""");

        // The 4-bit base, each optimizer (the paged ones page their state through the copy kernels), dropout, checkpointing.
        foreach (OptimizerKind optimizer in Enum.GetValues<OptimizerKind>())
        {
            using LlamaForCausalLM model = LlamaForCausalLM.LoadModel(device, folder);
            var options = new TrainerOptions { MaxSteps = 2, LearningRate = 1e-2, WarmupRatio = 0, GradientAccumulation = 1, Optimizer = optimizer };
            using var trainer = new LoraTrainer(device, EngineModel.Of(model), lora, options, new EngineOptions(16, GradientCheckpointing: optimizer == OptimizerKind.PagedAdamW32Bit));
            Assert.True(double.IsFinite(trainer.TrainStep([batch]).Loss));
        }

        // A dense base with the embeddings, norms and lm_head trained whole (modules_to_save), no checkpointing.
        using (LlamaForCausalLM dense = LlamaForCausalLM.LoadModel(device, folder, new LoadOptions(KeepProjectionsDense: true)))
        {
            var whole = LoraConfig.Parse("""{"r": 4, "lora_alpha": 8, "target_modules": "all-linear", "modules_to_save": ["embed_tokens", "norm", "lm_head"]}""");
            var options = new TrainerOptions { MaxSteps = 2, GradientAccumulation = 1, Optimizer = OptimizerKind.AdamW };
            using var trainer = new LoraTrainer(device, EngineModel.Of(dense), whole, options, new EngineOptions(16, GradientCheckpointing: false));
            Assert.True(double.IsFinite(trainer.TrainStep([batch]).Loss));
        }

        // Generation: prefill and paged decode of several sequences, greedy and sampled with every option, with and
        // without adapters; then scoring. NF4 with double quantization, and FP4 with plain float32 absmax.
        foreach (var quantization in new[] { QuantizationOptions.Default, new QuantizationOptions(QuantType.Fp4, 64, DoubleQuant: false) })
        {
            using LlamaForCausalLM model = LlamaForCausalLM.LoadModel(device, folder, new LoadOptions(QuantizeDenseAs: quantization));
            EngineModel engineModel = EngineModel.Of(model);
            (LoraAdapter adapter, _) = RandomAdapters.For(engineModel, 1, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]);
            using var engine = new GenerationEngine(engineModel, new GenerationEngineOptions { MaxBatch = 4, MaxSequenceLength = 64, PageTokens = 4, StepTokens = 8 });
            engine.Adapters.Add("all", adapter);
            var sampled = new SamplingOptions
            {
                Temperature = 0.8, TopK = 20, TopP = 0.9, MinP = 0.05, RepetitionPenalty = 1.2, PresencePenalty = 0.3, FrequencyPenalty = 0.2, Seed = 7,
                LogitBias = new Dictionary<int, float> { [3] = 2f },
            };
            GenerationRequest[] requests =
            [
                new(sequences[0]) { MaxTokens = 4 },
                new(sequences[1]) { MaxTokens = 4, Sampling = sampled },
                new(sequences[0]) { MaxTokens = 4, Adapter = "all" },
                new(sequences[1]) { MaxTokens = 4, Adapter = "all", Sampling = sampled },
            ];
            Assert.All(engine.GenerateBatch(requests, TestContext.Current.CancellationToken), r => Assert.NotEmpty(r.Ids));
            Assert.True(double.IsFinite(Scorer.Score(engineModel, sequences[0]).Perplexity));
        }

    }

    // Dense and 4-bit, into f32 and into the compute dtype (cuBLAS serves the dense one on a GPU; this is its fallback).
    private static void RunTensorCoreGemms(Device device)
    {
        if (device.ComputeDtype != DType.F32)
        {
            DType dtype = device.ComputeDtype;
            using DeviceTensor a = DeviceTensor.FromSingle(device, Narrow.Random(32 * 64, 1, dtype), dtype, 32, 64);
            using DeviceTensor b = DeviceTensor.FromSingle(device, Narrow.Random(48 * 64, 2, dtype), dtype, 48, 64);
            using DeviceTensor c = DeviceTensor.Allocate(device, DType.F32, 32, 48), y = DeviceTensor.Allocate(device, dtype, 32, 48);
            Gemm.Multiply(a, b, c, transposeB: true, path: GemmPath.TensorCore);
            Gemm.Multiply(a, b, y, transposeB: true, path: GemmPath.TensorCore);
            var weight = QuantizedTensor.Quantize(Narrow.Random(48 * 64, 3, DType.F32, 0.1), [48, 64]);
            using var packed = DeviceQuantizedTensor.Upload(device, weight);
            packed.Multiply(a, y, transposeWeight: true, path: GemmPath.TensorCore);
        }

        // With cuBLAS (not on this accelerator) the 4-bit base is dequantized to bf16 for each large GEMM.
        foreach (var quantization in new[] { QuantizationOptions.Default, new QuantizationOptions(QuantType.Fp4, 64, DoubleQuant: false) })
        {
            var weight = QuantizedTensor.Quantize(Narrow.Random(48 * 64, 4, DType.F32, 0.1), [48, 64], quantization);
            using var packed = DeviceQuantizedTensor.Upload(device, weight);
            using DeviceTensor bf16 = DeviceTensor.Allocate(device, DType.BF16, 48, 64), f32 = DeviceTensor.Allocate(device, DType.F32, 48, 64);
            packed.DequantizeToBf16(bf16.View<ushort>());
            packed.DequantizeToF32(f32.View<float>());
        }
    }
}
