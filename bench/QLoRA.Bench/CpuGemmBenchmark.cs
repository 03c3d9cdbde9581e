using System.Diagnostics;
using System.Runtime.Intrinsics.X86;
using System.Text.Json;
using System.Text.Json.Nodes;
using QLoRA.Core;
using QLoRA.Runtime.Devices;
using QLoRA.Runtime.Ops;
using QLoRA.Runtime.Tensors;

namespace QLoRA.Bench;

/// <summary>
/// The CPU accelerator's GEMM at the training shapes of a small Llama (4×256 tokens, hidden 256, intermediate 688,
/// vocab 1024), float32, next to PyTorch's matmul on the same shapes and layouts in the same run (bench/cpu/torch_gemm.py,
/// Debian's python3-torch with libopenblas0-pthread), and next to the portable kernel it replaced. Prints a table and one
/// JSON record.
/// </summary>
internal static class CpuGemmBenchmark
{
    private sealed record Shape(string Name, int M, int N, int K, bool TransposeA, bool TransposeB);

    private static readonly Shape[] Shapes =
    [
        new("q/o proj  x·Wᵀ", 1024, 256, 256, false, true),
        new("k/v proj  x·Wᵀ", 1024, 64, 256, false, true),
        new("gate/up   x·Wᵀ", 1024, 688, 256, false, true),
        new("down      x·Wᵀ", 1024, 256, 688, false, true),
        new("lm_head   x·Wᵀ", 1024, 1024, 256, false, true),
        new("down dx = dy·W", 1024, 688, 256, false, false),
        new("dW = dyᵀ·x", 688, 256, 1024, true, false),
    ];

    public static int Run(string[] args)
    {
        int reps = args.Length > 1 && int.TryParse(args[1], out int r) ? r : 20;
        using Device device = Device.Cpu();
        var rows = new List<(Shape Shape, double Ours, double? Portable, double? Torch)>();
        Dictionary<string, double> torch = RunTorchPeer(reps);
        foreach (Shape s in Shapes)
        {
            var rng = new Random(1);
            float[] Random(long n) => [.. Enumerable.Range(0, (int)n).Select(_ => (float)((rng.NextDouble() * 2) - 1))];
            using DeviceTensor a = DeviceTensor.FromHost<float>(device, Random((long)s.M * s.K), DType.F32, s.TransposeA ? [s.K, s.M] : [s.M, s.K]);
            using DeviceTensor b = DeviceTensor.FromHost<float>(device, Random((long)s.K * s.N), DType.F32, s.TransposeB ? [s.N, s.K] : [s.K, s.N]);
            using DeviceTensor c = DeviceTensor.Allocate(device, DType.F32, s.M, s.N);
            double ours = Median(reps, () => Gemm.Multiply(a, b, c, s.TransposeA, s.TransposeB, path: GemmPath.Cpu));
            // The portable kernel is slow: two runs are enough to see the ratio.
            double portable = Median(2, () => { Gemm.Multiply(a, b, c, s.TransposeA, s.TransposeB, path: GemmPath.Portable); device.Stream.Synchronize(); });
            rows.Add((s, ours, portable, torch.TryGetValue(s.Name, out double t) ? t : null));
        }

        static double Gflops(Shape s, double seconds) => 2.0 * s.M * s.N * s.K / seconds / 1e9;
        Console.WriteLine();
        Console.WriteLine($"CPU GEMM, float32, {Environment.ProcessorCount} cores (median of {reps})");
        Console.WriteLine("| product | M×N×K | ours GFLOP/s | PyTorch GFLOP/s | ours / PyTorch | portable kernel GFLOP/s |");
        Console.WriteLine("| --- | --- | ---: | ---: | ---: | ---: |");
        foreach ((Shape s, double ours, double? portable, double? peer) in rows)
        {
            string peerText = peer is double p ? $"{Gflops(s, p):F1}" : "n/a";
            string ratio = peer is double q ? $"{100 * q / ours:F0}%" : "n/a";
            Console.WriteLine($"| {s.Name} | {s.M}×{s.N}×{s.K} | {Gflops(s, ours):F1} | {peerText} | {ratio} | {Gflops(s, portable!.Value):F2} |");
        }

        double totalOurs = rows.Sum(x => x.Ours), totalPeer = rows.All(x => x.Torch is not null) ? rows.Sum(x => x.Torch!.Value) : double.NaN;
        double flops = rows.Sum(x => 2.0 * x.Shape.M * x.Shape.N * x.Shape.K);
        Console.WriteLine($"all shapes: ours {flops / totalOurs / 1e9:F1} GFLOP/s, PyTorch {flops / totalPeer / 1e9:F1} GFLOP/s, ratio {100 * totalPeer / totalOurs:F0}%");
        var record = new JsonObject
        {
            ["benchmark"] = "cpu-gemm",
            ["processors"] = Environment.ProcessorCount,
            ["ours_gflops"] = flops / totalOurs / 1e9,
            ["torch_gflops"] = double.IsNaN(totalPeer) ? null : flops / totalPeer / 1e9,
            ["ours_share_of_torch"] = double.IsNaN(totalPeer) ? null : totalPeer / totalOurs,
            ["shapes"] = new JsonArray([.. rows.Select(x => (JsonNode)new JsonObject
            {
                ["name"] = x.Shape.Name,
                ["ours_gflops"] = Gflops(x.Shape, x.Ours),
                ["torch_gflops"] = x.Torch is double t ? Gflops(x.Shape, t) : null,
                ["portable_gflops"] = Gflops(x.Shape, x.Portable!.Value),
            })]),
        };
        record["gemv"] = GemvTable(reps, device);
        Console.WriteLine(record.ToJsonString());
        return 0;
    }

    // The decode step's 4-bit GEMV: GB/s of packed weight next to a parallel read pass over as many bytes, same run.
    private static JsonArray GemvTable(int reps, Device device)
    {
        const int outFeatures = 4096, inFeatures = 4096;
        var rng = new Random(2);
        float[] w = [.. Enumerable.Range(0, outFeatures * inFeatures).Select(_ => (float)((rng.NextDouble() * 2) - 1))];
        QLoRA.Core.Quantization.QuantizedTensor q = QLoRA.Core.Quantization.QuantizedTensor.Quantize(w, [outFeatures, inFeatures]);
        using var weight = DeviceQuantizedTensor.Upload(device, q);
        byte[] packed = q.Packed.ToArray();
        double read = Median(reps, () =>
        {
            var partial = new long[Environment.ProcessorCount];
            Parallel.For(0, partial.Length, t =>
            {
                ReadOnlySpan<long> words = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, long>(packed.AsSpan(packed.Length / partial.Length * t, packed.Length / partial.Length));
                long sum = 0;
                foreach (long word in words)
                {
                    sum += word;
                }

                partial[t] = sum;
            });
        });
        var rows = new JsonArray();
        int[] paths = [.. new[] { 512, 256, 0 }.Where(w => w == 0 || (w == 512 ? Avx512F.IsSupported : Avx2.IsSupported && Fma.IsSupported))];
        string Label(int width) => width == 0 ? "scalar" : width == 512 ? "AVX-512" : "AVX2";
        Console.WriteLine();
        Console.WriteLine($"4-bit GEMV (NF4 + double quantization, {outFeatures}×{inFeatures}, {packed.Length / 1e6:F1} MB packed), float32 x; GB/s of packed weight (share of a read pass)");
        Console.WriteLine($"| batch | {string.Join(" | ", paths.Select(Label))} |");
        Console.WriteLine($"| ---: |{string.Concat(paths.Select(_ => " ---: |"))}");
        float[] table = QLoRA.Core.Quantization.FourBitCodes.Values(q.State.Type).ToArray(), absmax = q.State.Absmax.Decode();
        foreach (int batch in new[] { 1, 4, 8 })
        {
            float[] x = [.. Enumerable.Range(0, batch * inFeatures).Select(_ => (float)rng.NextDouble())];
            var y = new float[batch * outFeatures];
            var cells = new List<string>();
            foreach (int width in paths)
            {
                double t = Median(reps, () => Gemv(packed, table, absmax, q.State.BlockSize, outFeatures, inFeatures, x, y, batch, width));
                cells.Add($"{packed.Length / t / 1e9:F2} ({100 * read / t:F0}%)");
                rows.Add(new JsonObject { ["batch"] = batch, ["path"] = Label(width), ["gbps"] = packed.Length / t / 1e9, ["share_of_read"] = read / t });
            }

            Console.WriteLine($"| {batch} | {string.Join(" | ", cells)} |");
        }

        // The Ops entry point takes the widest path: the same as its column above, within noise.
        using (DeviceTensor x1 = DeviceTensor.FromHost<float>(device, [.. Enumerable.Range(0, inFeatures).Select(_ => (float)rng.NextDouble())], DType.F32, 1, inFeatures))
        using (DeviceTensor y1 = DeviceTensor.Allocate(device, DType.F32, 1, outFeatures))
        {
            double t = Median(reps, () => weight.Gemv(x1, y1));
            Console.WriteLine($"DeviceQuantizedTensor.Gemv, batch 1: {packed.Length / t / 1e9:F2} GB/s");
        }

        Console.WriteLine($"read pass: {packed.Length / read / 1e9:F2} GB/s");
        return rows;
    }

    private static unsafe void Gemv(byte[] packed, float[] table, float[] absmax, int blockSize, int outFeatures, int inFeatures, float[] x, float[] y, int batch, int width)
    {
        fixed (byte* p = packed)
        fixed (float* px = x, py = y)
        {
            QLoRA.Runtime.Cpu.CpuGemv.Multiply(p, table, absmax, blockSize, outFeatures, inFeatures, px, py, QLoRA.Runtime.Cpu.CpuElement.F32, batch, width);
        }
    }

    private static Dictionary<string, double> RunTorchPeer(int reps)
    {
        var cases = new JsonArray([.. Shapes.Select(s => (JsonNode)new JsonObject { ["name"] = s.Name, ["m"] = s.M, ["n"] = s.N, ["k"] = s.K, ["transpose_a"] = s.TransposeA, ["transpose_b"] = s.TransposeB, ["reps"] = reps })]);
        var result = new Dictionary<string, double>(StringComparer.Ordinal);
        if (PythonPeer.Run("torch_gemm.py", cases.ToJsonString(), Environment.ProcessorCount) is JsonArray rows)
        {
            foreach (JsonNode? row in rows)
            {
                result[row!["name"]!.GetValue<string>()] = row["seconds"]!.GetValue<double>();
            }

            bool openBlas = File.Exists("/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3");
            Console.WriteLine($"PyTorch peer: {result.Count} shapes, BLAS: {(openBlas ? "OpenBLAS (libopenblas0-pthread)" : "reference BLAS — install libopenblas0-pthread for a fair peer")}");
        }

        return result;
    }

    private static double Median(int reps, Action action)
    {
        action(); // warm: JIT and first-touch
        var times = new double[reps];
        for (int i = 0; i < reps; i++)
        {
            var sw = Stopwatch.StartNew();
            action();
            times[i] = sw.Elapsed.TotalSeconds;
        }

        Array.Sort(times);
        return times[reps / 2];
    }

    internal static string FindRepo()
    {
        for (string? dir = AppContext.BaseDirectory; dir is not null; dir = Path.GetDirectoryName(dir))
        {
            if (File.Exists(Path.Combine(dir, "QLoRA.Sdk.sln")))
            {
                return dir;
            }
        }

        return Directory.GetCurrentDirectory();
    }
}
