using System.Text.Json;
using QLoRA.Runtime.Devices;
using Device = QLoRA.Runtime.Devices.Device;

namespace QLoRA.Bench.Gpu;

/// <summary>
/// Where a step's device time goes, kernel by kernel (<see cref="Device.Profile"/>: a timing event before every launch,
/// no synchronization between them, CUDA graphs off meanwhile): a table sorted by time and one JSON record, so a single
/// GPU session says which kernel to work on next.
/// </summary>
internal static class KernelProfile
{
    /// <summary>Per-step device time of each kernel: (<paramref name="longRun"/> − <paramref name="shortRun"/>) ÷ <paramref name="steps"/>, so setup and prefill cancel.</summary>
    public static List<KernelTime> PerStep(Device device, Action longRun, Action? shortRun, int steps)
    {
        IReadOnlyList<KernelTime> Measure(Action run)
        {
            LaunchProfile profile = device.Profile();
            try
            {
                run();
            }
            catch
            {
                profile.Dispose();
                throw;
            }

            return profile.Stop();
        }

        var full = Measure(longRun).ToDictionary(t => t.Kernel);
        var setup = shortRun is null ? [] : Measure(shortRun).ToDictionary(t => t.Kernel);
        // A kernel the short run launches as often as the long one belongs to setup (prefill): its difference is noise.
        return [.. full.Values
            .Select(t => setup.TryGetValue(t.Kernel, out KernelTime s)
                ? new KernelTime(t.Kernel, t.Launches - s.Launches, t.Milliseconds - s.Milliseconds)
                : t)
            .Where(t => t.Launches > 0)
            .Select(t => new KernelTime(t.Kernel, (int)Math.Round((double)t.Launches / steps), Math.Max(0, t.Milliseconds) / steps))
            .OrderByDescending(t => t.Milliseconds)];
    }

    public static void Print(string title, IReadOnlyList<KernelTime> perStep, Dictionary<string, object> record)
    {
        double total = perStep.Sum(t => t.Milliseconds);
        Console.WriteLine($"| {title}: kernel | launches/step | µs/step | share |");
        Console.WriteLine("| --- | ---: | ---: | ---: |");
        foreach (KernelTime t in perStep.Take(24))
        {
            Console.WriteLine($"| {t.Kernel} | {t.Launches} | {t.Milliseconds * 1000:F1} | {t.Milliseconds / total:P1} |");
        }

        Console.WriteLine($"| all {perStep.Count} kernels | {perStep.Sum(t => t.Launches)} | {total * 1000:F1} | 100% |");
        record["kernels"] = perStep.Select(t => new Dictionary<string, object> { ["kernel"] = t.Kernel, ["launches"] = t.Launches, ["ms"] = t.Milliseconds }).ToList();
        record["device_ms_per_step"] = total;
        Console.WriteLine(JsonSerializer.Serialize(record));
    }
}
