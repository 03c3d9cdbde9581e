using System.Diagnostics;
using System.Text.Json;
using Device = QLoRA.Runtime.Devices.Device;

namespace QLoRA.Bench.Gpu;

/// <summary>The benchmark's rows (printed as a Markdown table) and its one JSON record, plus the timing helper.</summary>
internal sealed class BenchReport(Device device, bool small)
{
    private readonly List<(string What, string Shape, double Seconds, string Rate, string Share)> _rows = [];

    public Device Device { get; } = device;

    public bool Small { get; } = small;

    public Dictionary<string, object> Summary { get; } = new() { ["benchmark"] = "qlora-kernels", ["device"] = device.Description, ["small"] = small };

    /// <summary>Device copy bandwidth in bytes/s (read + write), measured first.</summary>
    public double CopyBandwidth { get; set; }

    /// <summary>cuBLAS bf16 GEMM rate in FLOP/s at the reference shape, when cuBLAS is present.</summary>
    public double? CublasFlops { get; set; }

    public void Add(string what, string shape, double seconds, string rate, string share) => _rows.Add((what, shape, seconds, rate, share));

    /// <summary>A row for a bandwidth-bound kernel: bytes it must move, as TB/s and as a share of copy bandwidth.</summary>
    public void AddBandwidth(string key, string what, string shape, double seconds, double bytes)
    {
        Add(what, shape, seconds, $"{bytes / seconds / 1e12:F3} TB/s", $"{100 * bytes / seconds / CopyBandwidth:F1}% of copy");
        Summary[key + "_tbps"] = bytes / seconds / 1e12;
        Summary[key + "_copy_share"] = bytes / seconds / CopyBandwidth;
    }

    /// <summary>A row for a compute-bound kernel: TFLOP/s and a share of the cuBLAS rate when known.</summary>
    public void AddCompute(string key, string what, string shape, double seconds, double flops)
    {
        double rate = flops / seconds;
        Add(what, shape, seconds, $"{rate / 1e12:F2} TFLOP/s", CublasFlops is double c ? $"{100 * rate / c:F1}% of cuBLAS" : "cuBLAS: absent");
        Summary[key + "_tflops"] = rate / 1e12;
        if (CublasFlops is double cublas)
        {
            Summary[key + "_cublas_share"] = rate / cublas;
        }
    }

    /// <summary>
    /// <see cref="AddCompute"/> for a kernel this accelerator may not run (e.g. tensor cores need 32-lane warps): an
    /// argument error becomes an "n/a" row instead of ending the run.
    /// </summary>
    public void TryAddCompute(string key, string what, string shape, Func<double> time, double flops)
    {
        try
        {
            AddCompute(key, what, shape, time(), flops);
        }
        catch (ArgumentException e)
        {
            Add(what, shape, double.NaN, "n/a", e.Message);
        }
    }

    public void Print()
    {
        Console.WriteLine();
        Console.WriteLine("| what | shape | time | rate | share |");
        Console.WriteLine("| --- | --- | ---: | ---: | ---: |");
        foreach (var r in _rows)
        {
            Console.WriteLine($"| {r.What} | {r.Shape} | {r.Seconds * 1e3:F3} ms | {r.Rate} | {r.Share} |");
        }

        Console.WriteLine(JsonSerializer.Serialize(Summary));
    }

    /// <summary>Median of <paramref name="iterations"/> timed runs after one warm-up, each synchronized.</summary>
    public double Time(Action action, int iterations)
    {
        action();
        Device.Synchronize();
        var times = new double[iterations];
        for (int i = 0; i < iterations; i++)
        {
            var sw = Stopwatch.StartNew();
            action();
            Device.Synchronize();
            times[i] = sw.Elapsed.TotalSeconds;
        }

        Array.Sort(times);
        return times[iterations / 2];
    }
}
