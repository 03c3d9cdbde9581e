using System.Runtime.InteropServices;
using ILGPU;
using ILGPU.Runtime;
using ILGPU.Runtime.Cuda;
using QLoRA.Core;
using QLoRA.Runtime.Tensors;
using Device = QLoRA.Runtime.Devices.Device;

namespace QLoRA.Runtime.Native;

/// <summary>
/// cuBLAS <c>cublasGemmEx</c> through P/Invoke (ILGPU's own wrapper has no GemmEx and no bf16): bf16 or f32 row-major
/// matrices, f32 accumulation, on the device's current stream. One cuBLAS handle per stream (a handle is not safe to
/// share between streams used from different threads), each bound to its stream with a 32 MiB workspace from the
/// device's caching allocator set (<c>cublasSetWorkspace</c>) — so cuBLAS allocates nothing itself, its memory shows in
/// the allocator's figures and its calls can be captured in CUDA graphs. Available only on CUDA devices where
/// libcublas.so.13 (or .12) loads; <see cref="TryCreate"/> returns null elsewhere and callers fall back to the ILGPU GEMM.
/// </summary>
public sealed unsafe class Cublas : IDisposable
{
    private const int OpN = 0, OpT = 1;
    private const int CudaR32F = 0, CudaR16F = 2, CudaR16BF = 14, ComputeF32 = 68, GemmDefault = -1;

    /// <summary>Workspace bytes per handle.</summary>
    public const long WorkspaceBytes = 32L << 20;

    private readonly Device _device;
    private readonly Api _api;
    private readonly Dictionary<IntPtr, (IntPtr Handle, Memory.DeviceBlock? Workspace)> _handles = [];

    private Cublas(Device device, Api api, IntPtr handle, IntPtr stream)
    {
        _device = device;
        _api = api;
        _handles[stream] = (handle, null);
    }

    /// <summary>Streams with a handle of their own.</summary>
    public int Handles
    {
        get
        {
            lock (_handles)
            {
                return _handles.Count;
            }
        }
    }

    // The handle of the device's current stream, created (bound, workspace set) on first use.
    private IntPtr HandleFor(AcceleratorStream stream)
    {
        IntPtr key = stream is CudaStream cuda ? cuda.StreamPtr : IntPtr.Zero;
        lock (_handles)
        {
            if (_handles.TryGetValue(key, out var entry) && (entry.Workspace is not null || _api.SetWorkspace is null))
            {
                return entry.Handle;
            }

            IntPtr handle = entry.Handle;
            if (handle == IntPtr.Zero)
            {
                if (_api.Create(&handle) != 0)
                {
                    throw new InvalidOperationException("cublasCreate failed for a new stream.");
                }

                _api.SetStream(handle, key);
            }

            Memory.DeviceBlock? workspace = null;
            if (_api.SetWorkspace is not null)
            {
                workspace = _device.Allocator.Allocate(WorkspaceBytes, stream);
                if (_api.SetWorkspace(handle, workspace.NativePointer, (nuint)WorkspaceBytes) != 0)
                {
                    workspace.Dispose();
                    workspace = null;
                }
            }

            _handles[key] = (handle, workspace ?? entry.Workspace);
            return handle;
        }
    }

    /// <summary>The library that was loaded.</summary>
    public string Library => _api.Name;

    /// <summary>A cuBLAS handle bound to the device's stream, or null when the device is not CUDA or no libcublas loads.</summary>
    public static Cublas? TryCreate(Device device)
    {
        if (device.Accelerator is not CudaAccelerator cuda || Api.TryLoad() is not Api api)
        {
            return null;
        }

        IntPtr handle;
        if (api.Create(&handle) != 0)
        {
            return null;
        }

        IntPtr defaultStream = cuda.DefaultStream is CudaStream stream ? stream.StreamPtr : IntPtr.Zero;
        api.SetStream(handle, defaultStream);
        return new Cublas(device, api, handle, defaultStream);
    }

    /// <summary>
    /// C = α·op(A)·op(B) + β·C for row-major matrices: A and B F32, BF16 or F16 of one dtype, C of that dtype or F32;
    /// f32 accumulation.
    /// </summary>
    /// <exception cref="ArgumentException">Shapes or dtypes disagree.</exception>
    /// <exception cref="InvalidOperationException">cuBLAS returned an error status.</exception>
    public void Gemm(DeviceTensor a, DeviceTensor b, DeviceTensor c, bool transposeA = false, bool transposeB = false, float alpha = 1f, float beta = 0f)
    {
        if (!Supports(a, b, c))
        {
            throw new ArgumentException($"cuBLAS GEMM takes A and B of one dtype (F32, BF16, F16) and C of it or F32, not {a.Dtype}/{b.Dtype}/{c.Dtype}.", nameof(a));
        }

        int m = checked((int)(transposeA ? a.Shape[1] : a.Shape[0])), k = checked((int)(transposeA ? a.Shape[0] : a.Shape[1]));
        int kb = checked((int)(transposeB ? b.Shape[1] : b.Shape[0])), n = checked((int)(transposeB ? b.Shape[0] : b.Shape[1]));
        if (k != kb || c.Shape[0] != m || c.Shape[1] != n)
        {
            throw new ArgumentException($"op(A) [{m}, {k}] · op(B) [{kb}, {n}] does not fit C [{string.Join(", ", c.Shape)}].", nameof(c));
        }

        IntPtr handle = HandleFor(_device.Stream); // the current stream's own handle (see Device.UseStream)
        int type = TypeOf(a.Dtype), cType = TypeOf(c.Dtype);
        _device.CountLaunch();
        // Row-major C = op(A)·op(B) is column-major Cᵀ = op(B)ᵀ·op(A)ᵀ: swap the operands, keep the flags.
        int status = _api.GemmEx(handle, transposeB ? OpT : OpN, transposeA ? OpT : OpN, n, m, k, &alpha,
            Pointer(b), type, checked((int)b.Shape[1]), Pointer(a), type, checked((int)a.Shape[1]), &beta,
            Pointer(c), cType, n, ComputeF32, GemmDefault);
        if (status != 0)
        {
            throw new InvalidOperationException($"cublasGemmEx failed with status {status} ({m}×{n}×{k}, {a.Dtype}).");
        }
    }

    private static IntPtr Pointer(DeviceTensor t) => t.NativePointer;

    /// <summary>Whether <see cref="Gemm"/> takes these dtypes.</summary>
    public static bool Supports(DeviceTensor a, DeviceTensor b, DeviceTensor c) =>
        a.Dtype == b.Dtype && a.Dtype is DType.F32 or DType.BF16 or DType.F16 && (c.Dtype == a.Dtype || c.Dtype == DType.F32);

    private static int TypeOf(DType dtype) => dtype switch
    {
        DType.BF16 => CudaR16BF,
        DType.F16 => CudaR16F,
        _ => CudaR32F,
    };

    /// <summary>Destroys the handles and returns their workspaces.</summary>
    public void Dispose()
    {
        lock (_handles)
        {
            foreach ((IntPtr handle, Memory.DeviceBlock? workspace) in _handles.Values)
            {
                _api.Destroy(handle);
                workspace?.Dispose();
            }

            _handles.Clear();
        }
    }

    private sealed class Api
    {
        public required string Name { get; init; }

        public required delegate* unmanaged<IntPtr*, int> Create { get; init; }

        public required delegate* unmanaged<IntPtr, int> Destroy { get; init; }

        public required delegate* unmanaged<IntPtr, IntPtr, int> SetStream { get; init; }

        public required delegate* unmanaged<IntPtr, int, int, int, int, int, float*, IntPtr, int, int, IntPtr, int, int, float*, IntPtr, int, int, int, int, int> GemmEx { get; init; }

        /// <summary>cublasSetWorkspace_v2 (cuBLAS 11.4+), or null.</summary>
        public delegate* unmanaged<IntPtr, IntPtr, nuint, int> SetWorkspace { get; init; }

        public static Api? TryLoad()
        {
            foreach (string name in new[] { "libcublas.so.13", "libcublas.so.12", "libcublas.so", "cublas64_13.dll", "cublas64_12.dll" })
            {
                if (NativeLibrary.TryLoad(name, out IntPtr library)
                    && NativeLibrary.TryGetExport(library, "cublasCreate_v2", out IntPtr create)
                    && NativeLibrary.TryGetExport(library, "cublasDestroy_v2", out IntPtr destroy)
                    && NativeLibrary.TryGetExport(library, "cublasSetStream_v2", out IntPtr setStream)
                    && NativeLibrary.TryGetExport(library, "cublasGemmEx", out IntPtr gemmEx))
                {
                    return new Api
                    {
                        Name = name,
                        Create = (delegate* unmanaged<IntPtr*, int>)create,
                        Destroy = (delegate* unmanaged<IntPtr, int>)destroy,
                        SetStream = (delegate* unmanaged<IntPtr, IntPtr, int>)setStream,
                        GemmEx = (delegate* unmanaged<IntPtr, int, int, int, int, int, float*, IntPtr, int, int, IntPtr, int, int, float*, IntPtr, int, int, int, int, int>)gemmEx,
                        SetWorkspace = NativeLibrary.TryGetExport(library, "cublasSetWorkspace_v2", out IntPtr workspace) ? (delegate* unmanaged<IntPtr, IntPtr, nuint, int>)workspace : null,
                    };
                }
            }

            return null;
        }
    }
}
