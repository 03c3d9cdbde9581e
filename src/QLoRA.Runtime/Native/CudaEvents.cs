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

    private static readonly Lazy<Api?> Driver = new(Api.TryLoad);

    private sealed class Api
    {
        public delegate* unmanaged<IntPtr*, uint, int> Create;
        public delegate* unmanaged<IntPtr, IntPtr, int> Record;
        public delegate* unmanaged<IntPtr, IntPtr, uint, int> Wait;
        public delegate* unmanaged<IntPtr, int> Destroy;

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

            return new Api
            {
                Create = (delegate* unmanaged<IntPtr*, uint, int>)create,
                Record = (delegate* unmanaged<IntPtr, IntPtr, int>)record,
                Wait = (delegate* unmanaged<IntPtr, IntPtr, uint, int>)wait,
                Destroy = (delegate* unmanaged<IntPtr, int>)destroy,
            };
        }
    }
}
