using System.Runtime.InteropServices;
using ILGPU.Runtime;
using ILGPU.Runtime.Cuda;

namespace QLoRA.Runtime.Native;

/// <summary>
/// Cross-stream ordering with CUDA events through the driver API (ILGPU exposes none): work queued on one stream after
/// <see cref="Order"/> waits, on the device, for the work queued on another before it — no host synchronization.
/// </summary>
internal static unsafe class CudaEvents
{
    private const uint DisableTiming = 2;

    /// <summary>
    /// Makes <paramref name="later"/>'s next work wait for everything queued on <paramref name="earlier"/> so far: an
    /// event recorded on one and waited on by the other on CUDA, a host synchronization of <paramref name="earlier"/>
    /// elsewhere (or where the driver's entry points are missing).
    /// </summary>
    public static void Order(AcceleratorStream later, AcceleratorStream earlier)
    {
        if (ReferenceEquals(later, earlier))
        {
            return;
        }

        if (Driver.Value is not Api api || later is not CudaStream to || earlier is not CudaStream from)
        {
            earlier.Synchronize();
            return;
        }

        IntPtr e;
        if (api.Create(&e, DisableTiming) != 0)
        {
            earlier.Synchronize();
            return;
        }

        try
        {
            if (api.Record(e, from.StreamPtr) != 0 || api.Wait(to.StreamPtr, e, 0) != 0)
            {
                earlier.Synchronize();
            }
        }
        finally
        {
            api.Destroy(e); // released once the wait is done: the driver keeps it alive until then
        }
    }

    /// <summary>Whether timing events exist here (the NVIDIA driver's event entry points loaded).</summary>
    public static bool TimingAvailable => Driver.Value is { ElapsedTime: not null };

    /// <summary>A timing event recorded on <paramref name="stream"/> now (after the work queued so far), or zero where there is none.</summary>
    public static IntPtr RecordTimed(AcceleratorStream stream)
    {
        if (Driver.Value is not Api api || api.ElapsedTime == null || stream is not CudaStream cuda)
        {
            return IntPtr.Zero;
        }

        IntPtr e;
        if (api.Create(&e, 0) != 0)
        {
            return IntPtr.Zero;
        }

        if (api.Record(e, cuda.StreamPtr) != 0)
        {
            api.Destroy(e);
            return IntPtr.Zero;
        }

        return e;
    }

    /// <summary>Milliseconds of device time from <paramref name="start"/> to <paramref name="end"/> (waits for <paramref name="end"/>), or NaN.</summary>
    public static double ElapsedMilliseconds(IntPtr start, IntPtr end)
    {
        if (Driver.Value is not Api api || api.ElapsedTime == null || start == IntPtr.Zero || end == IntPtr.Zero || api.Synchronize(end) != 0)
        {
            return double.NaN;
        }

        float ms;
        return api.ElapsedTime(&ms, start, end) == 0 ? ms : double.NaN;
    }

    /// <summary>Releases an event from <see cref="RecordTimed"/> (zero is ignored).</summary>
    public static void Release(IntPtr e)
    {
        if (e != IntPtr.Zero && Driver.Value is Api api)
        {
            api.Destroy(e);
        }
    }

    private static readonly Lazy<Api?> Driver = new(Api.TryLoad);

    private sealed class Api
    {
        public delegate* unmanaged<IntPtr*, uint, int> Create;
        public delegate* unmanaged<IntPtr, IntPtr, int> Record;
        public delegate* unmanaged<IntPtr, IntPtr, uint, int> Wait;
        public delegate* unmanaged<IntPtr, int> Destroy;
        public delegate* unmanaged<IntPtr, int> Synchronize;
        public delegate* unmanaged<float*, IntPtr, IntPtr, int> ElapsedTime;

        public static Api? TryLoad()
        {
            if (!CudaDriverLibrary.TryLoad(out IntPtr lib))
            {
                return null;
            }

            if (!NativeLibrary.TryGetExport(lib, "cuEventCreate", out IntPtr create) || !NativeLibrary.TryGetExport(lib, "cuEventRecord", out IntPtr record)
                || !NativeLibrary.TryGetExport(lib, "cuStreamWaitEvent", out IntPtr wait) || !NativeLibrary.TryGetExport(lib, "cuEventDestroy_v2", out IntPtr destroy))
            {
                return null;
            }

            // CUDA 12.8+ names the timing query _v2 (13.0 headers map the plain name to it); older drivers have the plain one.
            bool timing = (NativeLibrary.TryGetExport(lib, "cuEventElapsedTime_v2", out IntPtr elapsed) || NativeLibrary.TryGetExport(lib, "cuEventElapsedTime", out elapsed))
                & NativeLibrary.TryGetExport(lib, "cuEventSynchronize", out IntPtr synchronize);
            return new Api
            {
                Synchronize = timing ? (delegate* unmanaged<IntPtr, int>)synchronize : null,
                ElapsedTime = timing ? (delegate* unmanaged<float*, IntPtr, IntPtr, int>)elapsed : null,
                Create = (delegate* unmanaged<IntPtr*, uint, int>)create,
                Record = (delegate* unmanaged<IntPtr, IntPtr, int>)record,
                Wait = (delegate* unmanaged<IntPtr, IntPtr, uint, int>)wait,
                Destroy = (delegate* unmanaged<IntPtr, int>)destroy,
            };
        }
    }
}
