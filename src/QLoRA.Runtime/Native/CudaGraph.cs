using System.Runtime.InteropServices;
using ILGPU.Runtime;
using ILGPU.Runtime.Cuda;

namespace QLoRA.Runtime.Native;

/// <summary>
/// A CUDA graph captured from a stream through the driver API (ILGPU has no graph API): the work an action queues on a
/// non-default CUDA stream is recorded once (<c>cuStreamBeginCapture</c> / <c>cuStreamEndCapture</c>), instantiated
/// (<c>cuGraphInstantiateWithFlags</c>) and replayed with one <c>cuGraphLaunch</c>. The recorded work must read and
/// write the same buffers on every replay and must not allocate, copy from the host or synchronize.
/// </summary>
internal sealed unsafe class CudaGraph : IDisposable
{
    private const int CaptureModeThreadLocal = 1;
    private IntPtr _graph, _exec;

    private CudaGraph(IntPtr graph, IntPtr exec)
    {
        _graph = graph;
        _exec = exec;
    }

    /// <summary>Whether libcuda's graph entry points are present (only on machines with the NVIDIA driver).</summary>
    public static bool IsAvailable => Driver.Value is not null;

    /// <summary>
    /// Records what <paramref name="body"/> queues on <paramref name="stream"/> as a graph; null (nothing recorded, the
    /// stream usable again) when capture is unavailable or the work cannot be captured.
    /// </summary>
    public static CudaGraph? TryCapture(AcceleratorStream stream, Action body)
    {
        if (Driver.Value is not Api api || stream is not CudaStream cuda || cuda.StreamPtr == IntPtr.Zero)
        {
            return null; // the legacy default stream cannot be captured
        }

        if (api.BeginCapture(cuda.StreamPtr, CaptureModeThreadLocal) != 0)
        {
            return null;
        }

        IntPtr graph = IntPtr.Zero;
        Exception? failure = null;
        try
        {
            body();
        }
        catch (Exception e)
        {
            failure = e;
        }
        finally
        {
            api.EndCapture(cuda.StreamPtr, &graph);
        }

        if (failure is not null || graph == IntPtr.Zero)
        {
            if (graph != IntPtr.Zero)
            {
                api.GraphDestroy(graph);
            }

            return null;
        }

        IntPtr exec;
        if (api.Instantiate(&exec, graph, 0) != 0)
        {
            api.GraphDestroy(graph);
            return null;
        }

        return new CudaGraph(graph, exec);
    }

    /// <summary>Replays the graph on <paramref name="stream"/>.</summary>
    /// <exception cref="InvalidOperationException">The driver refused the launch.</exception>
    public void Launch(AcceleratorStream stream)
    {
        int status = Driver.Value!.Launch(_exec, ((CudaStream)stream).StreamPtr);
        if (status != 0)
        {
            throw new InvalidOperationException($"cuGraphLaunch failed with CUresult {status}.");
        }
    }

    public void Dispose()
    {
        if (Driver.Value is Api api)
        {
            if (_exec != IntPtr.Zero)
            {
                api.ExecDestroy(_exec);
            }

            if (_graph != IntPtr.Zero)
            {
                api.GraphDestroy(_graph);
            }
        }

        _exec = _graph = IntPtr.Zero;
    }

    private static readonly Lazy<Api?> Driver = new(Api.TryLoad);

    private sealed class Api
    {
        public delegate* unmanaged<IntPtr, int, int> BeginCapture;
        public delegate* unmanaged<IntPtr, IntPtr*, int> EndCapture;
        public delegate* unmanaged<IntPtr*, IntPtr, ulong, int> Instantiate;
        public delegate* unmanaged<IntPtr, IntPtr, int> Launch;
        public delegate* unmanaged<IntPtr, int> ExecDestroy;
        public delegate* unmanaged<IntPtr, int> GraphDestroy;

        public static Api? TryLoad()
        {
            if (!CudaDriverLibrary.TryLoad(out IntPtr lib))
            {
                return null;
            }

            bool Get(string name, out IntPtr p) => NativeLibrary.TryGetExport(lib, name, out p);
            if (!Get("cuStreamBeginCapture_v2", out IntPtr begin) || !Get("cuStreamEndCapture", out IntPtr end) || !Get("cuGraphInstantiateWithFlags", out IntPtr instantiate)
                || !Get("cuGraphLaunch", out IntPtr launch) || !Get("cuGraphExecDestroy", out IntPtr execDestroy) || !Get("cuGraphDestroy", out IntPtr destroy))
            {
                return null;
            }

            return new Api
            {
                BeginCapture = (delegate* unmanaged<IntPtr, int, int>)begin,
                EndCapture = (delegate* unmanaged<IntPtr, IntPtr*, int>)end,
                Instantiate = (delegate* unmanaged<IntPtr*, IntPtr, ulong, int>)instantiate,
                Launch = (delegate* unmanaged<IntPtr, IntPtr, int>)launch,
                ExecDestroy = (delegate* unmanaged<IntPtr, int>)execDestroy,
                GraphDestroy = (delegate* unmanaged<IntPtr, int>)destroy,
            };
        }
    }
}
