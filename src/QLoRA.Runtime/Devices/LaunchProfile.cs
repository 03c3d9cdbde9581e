using System.Collections.Concurrent;
using System.Diagnostics;
using System.Reflection;
using ILGPU.Runtime;

namespace QLoRA.Runtime.Devices;

/// <summary>Device time of one kernel site over a profile: how often it launched and for how long in all.</summary>
/// <param name="Kernel">The launching site: the Ops/kernels class and method ("FusedDecode.GemvThree"), or "cuBLAS".</param>
/// <param name="Launches">Launches from that site while the profile was active.</param>
/// <param name="Milliseconds">Device time of those launches together.</param>
public readonly record struct KernelTime(string Kernel, int Launches, double Milliseconds);

/// <summary>
/// Where the device time goes, launch by launch (<see cref="Device.Profile"/>): every kernel launch and cuBLAS call is
/// preceded by a timing event on its stream, and each launch is charged the device time up to the next event on that
/// stream — no host synchronization between launches, so the work runs as it does unprofiled (CUDA graphs are not
/// captured meanwhile: a captured step would hide its launches). On the CPU accelerator, which has no events, each mark
/// waits for the stream and reads a clock (a rough guide; the CPU schedules launch nothing and are charged to the launch
/// before them).
/// </summary>
public sealed class LaunchProfile : IDisposable
{
    private static readonly ConcurrentDictionary<MethodInfo, string> Names = new(ReferenceEqualityComparer.Instance);
    private readonly Device _device;
    private readonly List<Mark> _marks = [];
    private readonly object _gate = new();
    private bool _stopped;

    internal LaunchProfile(Device device) => _device = device;

    private readonly record struct Mark(string Site, AcceleratorStream Stream, IntPtr Event, long Ticks);

    internal void MarkKernel(MethodInfo loader, Delegate kernel, AcceleratorStream stream) => Add(Names.GetOrAdd(loader, _ => KernelName(kernel) ?? SiteName(loader)), stream);

    // "FusedDecodeKernels.GemvThree<UInt16,Bf16Element>": the kernel method ILGPU compiled, where it kept that.
    internal static string? KernelName(Delegate kernel)
    {
        MethodInfo? method = KernelUtil.TryGetKernel(kernel, out Kernel? k) ? k.CompiledKernel?.SourceMethod as MethodInfo : null;
        if (method is null)
        {
            return null;
        }

        string arguments = method.IsGenericMethod ? $"<{string.Join(",", method.GetGenericArguments().Select(a => a.Name))}>" : "";
        return $"{method.DeclaringType?.Name}.{method.Name}{arguments}";
    }

    internal void MarkCublas(AcceleratorStream stream) => Add("cuBLAS", stream);

    private void Add(string site, AcceleratorStream stream)
    {
        IntPtr e = IntPtr.Zero;
        long ticks = 0;
        if (_device.Kind == DeviceKind.Cuda)
        {
            e = Native.CudaEvents.RecordTimed(stream);
        }
        else
        {
            stream.Synchronize();
            ticks = Stopwatch.GetTimestamp();
        }

        lock (_gate)
        {
            if (!_stopped)
            {
                _marks.Add(new Mark(site, stream, e, ticks));
                return;
            }
        }

        Native.CudaEvents.Release(e);
    }

    /// <summary>
    /// Ends the profile (waits for the profiled work) and returns each site's launches and device time, longest first.
    /// </summary>
    public IReadOnlyList<KernelTime> Stop()
    {
        List<Mark> marks;
        lock (_gate)
        {
            if (_stopped)
            {
                throw new InvalidOperationException("This profile has already been stopped.");
            }

            _stopped = true;
            marks = [.. _marks];
        }

        _device.EndProfile(this);
        var totals = new Dictionary<string, (int Launches, double Ms)>(StringComparer.Ordinal);
        foreach (IGrouping<AcceleratorStream, Mark> onStream in marks.GroupBy(m => m.Stream, ReferenceEqualityComparer.Instance as IEqualityComparer<AcceleratorStream>))
        {
            List<Mark> ordered = [.. onStream];
            Mark end = _device.Kind == DeviceKind.Cuda
                ? new Mark("", onStream.Key, Native.CudaEvents.RecordTimed(onStream.Key), 0)
                : new Mark("", onStream.Key, IntPtr.Zero, SynchronizedTimestamp(onStream.Key));
            ordered.Add(end);
            for (int i = 0; i + 1 < ordered.Count; i++)
            {
                double ms = _device.Kind == DeviceKind.Cuda
                    ? Native.CudaEvents.ElapsedMilliseconds(ordered[i].Event, ordered[i + 1].Event)
                    : Stopwatch.GetElapsedTime(ordered[i].Ticks, ordered[i + 1].Ticks).TotalMilliseconds;
                (int launches, double total) = totals.GetValueOrDefault(ordered[i].Site);
                totals[ordered[i].Site] = (launches + 1, total + ms);
            }

            foreach (Mark m in ordered)
            {
                Native.CudaEvents.Release(m.Event);
            }
        }

        return [.. totals.Select(t => new KernelTime(t.Key, t.Value.Launches, t.Value.Ms)).OrderByDescending(t => t.Milliseconds)];
    }

    private static long SynchronizedTimestamp(AcceleratorStream stream)
    {
        stream.Synchronize();
        return Stopwatch.GetTimestamp();
    }

    /// <summary>Stops the profile if it is still running (its results are dropped).</summary>
    public void Dispose()
    {
        bool running;
        lock (_gate)
        {
            running = !_stopped;
        }

        if (running)
        {
            Stop();
        }
    }

    // "FusedDecode.GemvThree" from the loader lambda "<GemvThree>b__5_0" of FusedDecode's closure class "<>c".
    internal static string SiteName(MethodInfo loader)
    {
        Type? type = loader.DeclaringType;
        while (type is not null && type.Name.StartsWith('<'))
        {
            type = type.DeclaringType;
        }

        string owner = type?.Name ?? "?";
        int tick = owner.IndexOf('`');
        owner = tick > 0 ? owner[..tick] : owner;
        string name = loader.Name;
        int open = name.IndexOf('<'), close = name.IndexOf('>');
        string method = open >= 0 && close > open + 1 ? name[(open + 1)..close] : name;
        return $"{owner}.{method}";
    }
}
