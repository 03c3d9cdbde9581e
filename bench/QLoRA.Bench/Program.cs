using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Jobs;
using BenchmarkDotNet.Running;
using BenchmarkDotNet.Toolchains.InProcess.Emit;
using QLoRA.Bench;

// dotnet run -c Release --project bench/QLoRA.Bench -- --filter '*'     BenchmarkDotNet: NF4 kernels vs a read pass
// dotnet run -c Release --project bench/QLoRA.Bench -- weights [layers]  build-time quantization and no-op rebuilds
// dotnet run -c Release --project bench/QLoRA.Bench -- --filter '*Tokenizer*' '*ChatTemplate*'   tokenizer vs the Rust library, templates
// dotnet run -c Release --project bench/QLoRA.Bench -- cpu-gemm [reps]   the CPU accelerator's GEMM next to PyTorch's matmul
if (args.Length > 0 && args[0] == "weights")
{
    return WeightsBuildBenchmark.Run(args);
}

if (args.Length > 0 && args[0] == "cpu-gemm")
{
    return CpuGemmBenchmark.Run(args);
}

// dotnet run -c Release --project bench/QLoRA.Bench -- cpu-train-step [reps]  one LoRA step of the small Llama vs PyTorch's
if (args.Length > 0 && args[0] == "cpu-train-step")
{
    return CpuTrainStepBenchmark.Run(args);
}

// dotnet run -c Release --project bench/QLoRA.Bench -- cpu-forward [reps]  forward of 256 tokens, CPU schedules vs before
if (args.Length > 0 && args[0] == "cpu-forward")
{
    return CpuForwardBenchmark.Run(args);
}

IConfig config = DefaultConfig.Instance
    .AddJob(Job.Default.WithWarmupCount(3).WithIterationCount(20).WithToolchain(InProcessEmitToolchain.Instance))
    .AddColumn(new ThroughputColumn(relative: false), new ThroughputColumn(relative: true))
    .AddColumn(new TextThroughputColumn(relative: false), new TextThroughputColumn(relative: true));
BenchmarkSwitcher.FromAssembly(typeof(QuantizationThroughput).Assembly).Run(args, config);
return 0;
