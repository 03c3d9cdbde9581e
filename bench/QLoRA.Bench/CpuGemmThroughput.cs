using BenchmarkDotNet.Attributes;
using QLoRA.Core;
using QLoRA.Runtime.Devices;
using QLoRA.Runtime.Ops;
using QLoRA.Runtime.Tensors;

namespace QLoRA.Bench;

/// <summary>
/// BenchmarkDotNet view of the CPU accelerator's GEMM at the small Llama's training shapes (float32), with the portable
/// kernel it replaced as the baseline of the same run. GFLOP/s = 2·M·N·K / mean time. The PyTorch comparison, which
/// needs a second process, is the console mode: <c>dotnet run -c Release --project bench/QLoRA.Bench -- cpu-gemm</c>.
/// </summary>
[MemoryDiagnoser(displayGenColumns: false)]
public class CpuGemmThroughput
{
    private Device? _device;
    private DeviceTensor? _a, _b, _c;

    /// <summary>M×N×K and the layout: "x·Wᵀ" (B transposed), "dy·W", "dyᵀ·x" (A transposed).</summary>
    [Params("1024x688x256 x·Wᵀ", "1024x256x688 x·Wᵀ", "1024x688x256 dy·W", "688x256x1024 dyᵀ·x")]
    public string Shape { get; set; } = "";

    private (int M, int N, int K, bool TransposeA, bool TransposeB) Parse()
    {
        string[] parts = Shape.Split(' ');
        int[] d = [.. parts[0].Split('x').Select(int.Parse)];
        return (d[0], d[1], d[2], parts[1] == "dyᵀ·x", parts[1] == "x·Wᵀ");
    }

    [GlobalSetup]
    public void Setup()
    {
        _device = Device.Cpu();
        (int m, int n, int k, bool ta, bool tb) = Parse();
        var rng = new Random(1);
        float[] Random(long count) => [.. Enumerable.Range(0, (int)count).Select(_ => (float)((rng.NextDouble() * 2) - 1))];
        _a = DeviceTensor.FromHost<float>(_device, Random((long)m * k), DType.F32, ta ? [k, m] : [m, k]);
        _b = DeviceTensor.FromHost<float>(_device, Random((long)k * n), DType.F32, tb ? [n, k] : [k, n]);
        _c = DeviceTensor.Allocate(_device, DType.F32, m, n);
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _a?.Dispose();
        _b?.Dispose();
        _c?.Dispose();
        _device?.Dispose();
    }

    [Benchmark]
    public void CpuGemm()
    {
        (_, _, _, bool ta, bool tb) = Parse();
        Gemm.Multiply(_a!, _b!, _c!, ta, tb, path: GemmPath.Cpu);
    }

    [Benchmark(Baseline = true)]
    public void PortableKernel()
    {
        (_, _, _, bool ta, bool tb) = Parse();
        Gemm.Multiply(_a!, _b!, _c!, ta, tb, path: GemmPath.Portable);
        _a!.Device.Stream.Synchronize();
    }
}
