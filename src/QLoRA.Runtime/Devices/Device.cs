using System.Collections.Concurrent;
using System.Globalization;
using System.Reflection;
using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Runtime;
using ILGPU.Runtime.CPU;
using ILGPU.Runtime.Cuda;
using QLoRA.Core;

namespace QLoRA.Runtime.Devices;

/// <summary>
/// One accelerator (a CUDA GPU, or ILGPU's CPU accelerator) with its ILGPU context, its launch geometry for
/// grid-stride kernels and its kernel cache.
/// </summary>
public sealed class Device : IDisposable
{
    /// <summary>Environment variable that overrides <see cref="Best"/>: <c>cpu</c>, <c>cuda</c> or <c>cuda:N</c>.</summary>
    public const string EnvironmentVariable = "QLORA_DEVICE";

    private readonly Context _context;
    private readonly ConcurrentDictionary<MethodInfo, Delegate> _kernels = new(ReferenceEqualityComparer.Instance);
    private readonly object _kernelLoads = new();

    // Before any ILGPU context: lets ILGPU find a driver installed as libcuda.so.1 alone (see CudaDriverLibrary).
    static Device() => Native.CudaDriverLibrary.Install();

    private Device(Context context, Accelerator accelerator, DeviceKind kind)
    {
        _context = context;
        Accelerator = accelerator;
        Kind = kind;

        // Grid-stride launches: enough groups to fill the machine, each thread looping over many elements.
        GroupSize = kind == DeviceKind.Cuda ? 256 : Math.Max(1, accelerator.WarpSize);
        GroupCount = kind == DeviceKind.Cuda ? accelerator.NumMultiprocessors * 8 : Math.Max(1, accelerator.NumMultiprocessors);
        Allocator = new Memory.CachingAllocator(accelerator);
        _computeDtype = DefaultComputeDtype(accelerator);
    }

    private DType _computeDtype;

    /// <summary>
    /// The dtype of activations, their gradients and dense frozen weights (embeddings, unquantized linears) for layers
    /// and models loaded on this device: BF16 by default on CUDA GPUs that have it (sm_80+), F16 on older GPUs, F32 on
    /// the CPU accelerator (which has no faster narrow arithmetic; tests and gradient checks use F32). Kernels always
    /// sum in float32; norm weights, biases, LoRA matrices, their gradients and optimizer state stay F32.
    /// Set it before loading a model; <c>QLORA_COMPUTE_DTYPE=f32|bf16|f16</c> sets the initial value.
    /// </summary>
    /// <exception cref="ArgumentException">Set to a dtype other than F32, BF16 or F16.</exception>
    public DType ComputeDtype
    {
        get => _computeDtype;
        set => _computeDtype = value is DType.F32 or DType.BF16 or DType.F16
            ? value
            : throw new ArgumentException($"The compute dtype is F32, BF16 or F16, not {value}.", nameof(value));
    }

    /// <summary>Environment variable that sets the initial <see cref="ComputeDtype"/>: <c>f32</c>, <c>bf16</c> or <c>f16</c>.</summary>
    public const string ComputeDtypeVariable = "QLORA_COMPUTE_DTYPE";

    private static DType DefaultComputeDtype(Accelerator accelerator) =>
        ParseComputeDtype(Environment.GetEnvironmentVariable(ComputeDtypeVariable)) ?? HardwareComputeDtype(accelerator);

    /// <summary>The dtype a QLORA_COMPUTE_DTYPE value names, or null when it is unset.</summary>
    /// <exception cref="DeviceNotAvailableException">The value names no compute dtype.</exception>
    internal static DType? ParseComputeDtype(string? value) => value?.Trim().ToLowerInvariant() switch
    {
        null or "" => null,
        "f32" or "float32" => DType.F32,
        "bf16" or "bfloat16" => DType.BF16,
        "f16" or "float16" => DType.F16,
        string other => throw new DeviceNotAvailableException($"{ComputeDtypeVariable}='{other}' is not 'f32', 'bf16' or 'f16'."),
    };

    private static DType HardwareComputeDtype(Accelerator accelerator) => accelerator switch
    {
        CudaAccelerator cuda when cuda.Architecture is { } arch && arch.Major >= 8 => DType.BF16,
        CudaAccelerator => DType.F16,
        _ => DType.F32,
    };

    /// <summary>The caching allocator device tensors come from.</summary>
    public Memory.CachingAllocator Allocator { get; }

    /// <summary>The ILGPU accelerator.</summary>
    public Accelerator Accelerator { get; }

    /// <summary>CUDA or CPU.</summary>
    public DeviceKind Kind { get; }

    /// <summary>Threads per group of grid-stride launches.</summary>
    public int GroupSize { get; }

    /// <summary>Groups of grid-stride launches.</summary>
    public int GroupCount { get; }

    /// <summary>Device memory in bytes (host memory for the CPU accelerator).</summary>
    public long MemoryBytes => Accelerator.MemorySize;

    /// <summary>One line: name, memory, architecture.</summary>
    public string Description => Kind == DeviceKind.Cuda && Accelerator is CudaAccelerator cuda
        ? $"CUDA {Accelerator.Name}, {MemoryBytes / (1024.0 * 1024 * 1024):F1} GiB, {cuda.Architecture}, {Accelerator.NumMultiprocessors} SMs"
        : $"CPU accelerator ({Accelerator.NumMultiprocessors} processors × warp {Accelerator.WarpSize}), {Environment.ProcessorCount} cores";

    /// <summary>
    /// CUDA device 0 when a CUDA device is present, else the CPU accelerator; <c>QLORA_DEVICE=cpu|cuda|cuda:N</c> overrides.
    /// </summary>
    /// <exception cref="DeviceNotAvailableException">QLORA_DEVICE asks for a device this machine lacks, or is malformed.</exception>
    public static Device Best()
    {
        string? requested = Environment.GetEnvironmentVariable(EnvironmentVariable);
        if (!string.IsNullOrWhiteSpace(requested))
        {
            return Parse(requested.Trim());
        }

        Context context = Context.Create(builder => KernelCompilation.Configure(builder.Default()));
        if (context.GetCudaDevices().Count > 0)
        {
            return Create(context, context.GetCudaDevice(0), DeviceKind.Cuda);
        }

        context.Dispose();
        return Cpu();
    }

    /// <summary>ILGPU's CPU accelerator, one multiprocessor per core (grid-stride kernels then use every core).</summary>
    public static Device Cpu() => Cpu(CpuWarpSize, 1);

    /// <summary>A CPU accelerator with wider groups (tests of tiled kernels at tile sizes above the default 2).</summary>
    /// <param name="threadsPerWarp">Lanes per warp (OS threads).</param>
    /// <param name="warpsPerGroup">Warps per group.</param>
    /// <param name="multiprocessors">Groups run at once (default: one per core).</param>
    /// <param name="cpuSchedules">Run the Ops through their CPU schedules (SIMD GEMM, barrier-free attention); false runs
    /// the GPU schedules' kernels on the emulated warps instead, which is how those kernels are tested without a GPU.</param>
    internal static Device Cpu(int threadsPerWarp, int warpsPerGroup, int? multiprocessors = null, bool cpuSchedules = true)
    {
        var cpu = new CPUDevice(numThreadsPerWarp: threadsPerWarp, numWarpsPerMultiprocessor: warpsPerGroup, numMultiprocessors: multiprocessors ?? Environment.ProcessorCount);
        Context context = Context.Create(builder => builder.CPU(cpu).EnableAlgorithms());
        Device device = Create(context, context.GetCPUDevice(0), DeviceKind.Cpu);
        device.CpuSchedules = cpuSchedules;
        return device;
    }

    /// <summary>
    /// True on the CPU accelerator (unless a test asked for the GPU schedules): Ops take their CPU schedules, which work
    /// on the accelerator's host-memory buffers in place instead of emulating GPU groups with OS threads.
    /// </summary>
    internal bool CpuSchedules { get; private set; }

    // The smallest warp ILGPU's CPU accelerator accepts; each lane is an OS thread, so fewer is faster for grid-stride loops.
    private const int CpuWarpSize = 2;

    /// <summary>CUDA device <paramref name="ordinal"/>.</summary>
    /// <exception cref="DeviceNotAvailableException">No such CUDA device (or no CUDA driver).</exception>
    public static Device Cuda(int ordinal = 0)
    {
        Context context = Context.Create(builder => KernelCompilation.Configure(builder.Cuda()));
        int count = context.GetCudaDevices().Count;
        if (ordinal < 0 || ordinal >= count)
        {
            context.Dispose();
            throw new DeviceNotAvailableException(count == 0
                ? "CUDA was asked for but no CUDA device is visible (no NVIDIA driver, or CUDA_VISIBLE_DEVICES hides them). Use QLORA_DEVICE=cpu to run on the CPU."
                : $"CUDA device {ordinal} was asked for but only {count} exist (0..{count - 1}).");
        }

        return Create(context, context.GetCudaDevice(ordinal), DeviceKind.Cuda);
    }

    /// <summary>Parses <c>cpu</c>, <c>cpu-gpu-kernels</c> (the GPU schedules' kernels emulated on the CPU), <c>cuda</c> or <c>cuda:N</c>.</summary>
    /// <exception cref="DeviceNotAvailableException">Malformed or unavailable.</exception>
    public static Device Parse(string spec)
    {
        string s = spec.ToLowerInvariant();
        if (s == "cpu")
        {
            return Cpu();
        }

        if (s == "cpu-gpu-kernels")
        {
            // The GPU schedules' kernels on the CPU accelerator (4-lane warps, 2 per group): what a GPU runs, slowly,
            // on any machine — for checking a GPU run's code path before it gets a GPU.
            return Cpu(4, 2, cpuSchedules: false);
        }

        if (s == "cuda")
        {
            return Cuda(0);
        }

        if (s.StartsWith("cuda:", StringComparison.Ordinal) && int.TryParse(s[5..], NumberStyles.None, CultureInfo.InvariantCulture, out int n))
        {
            return Cuda(n);
        }

        throw new DeviceNotAvailableException($"{EnvironmentVariable}='{spec}' is not 'cpu', 'cpu-gpu-kernels', 'cuda' or 'cuda:N'.");
    }

    private static Device Create(Context context, ILGPU.Runtime.Device device, DeviceKind kind)
    {
        try
        {
            return new Device(context, device.CreateAccelerator(context), kind);
        }
        catch
        {
            context.Dispose();
            throw;
        }
    }

    /// <summary>
    /// The kernel <paramref name="load"/> compiles, loaded once per device. The cache is keyed by the loader's method —
    /// a static lambda is one method per call site and generic instantiation — and read without a lock or a string key,
    /// so a launch costs one lock-free lookup by reference.
    /// </summary>
    internal T Kernel<T>(Func<Accelerator, T> load)
        where T : Delegate
    {
        Interlocked.Increment(ref _launches); // every lookup is followed by exactly one launch
        MethodInfo site = load.Method;
        if (!_kernels.TryGetValue(site, out Delegate? kernel))
        {
            lock (_kernelLoads)
            {
                // Compile once even when two threads miss together.
                kernel = _kernels.GetOrAdd(site, _ => load(Accelerator));
            }
        }

        _profile?.MarkKernel(site, kernel, Stream); // after any compilation: the mark times the launch that follows
        return (T)kernel;
    }

    /// <summary>Every kernel loaded on this device so far (what <see cref="Kernel{T}"/> compiled), in no order.</summary>
    internal IReadOnlyCollection<Delegate> LoadedKernels => [.. _kernels.Values];

    private long _launches;

    /// <summary>
    /// Kernel launches issued on this device so far (ILGPU kernels and cuBLAS calls; the CPU schedules of the CPU
    /// accelerator launch nothing) — what the decode step's launch budget is measured with.
    /// </summary>
    public long LaunchCount => Interlocked.Read(ref _launches);

    /// <summary>Counts a launch made outside <see cref="Kernel{T}"/> (a cuBLAS call).</summary>
    internal void CountLaunch()
    {
        Interlocked.Increment(ref _launches);
        _profile?.MarkCublas(Stream);
    }

    private volatile LaunchProfile? _profile;

    /// <summary>
    /// Starts charging device time to each launching site (<see cref="LaunchProfile"/>) until the profile is stopped;
    /// CUDA graphs are neither captured nor replayed meanwhile. One profile at a time per device.
    /// </summary>
    /// <exception cref="InvalidOperationException">A profile is already running on this device.</exception>
    public LaunchProfile Profile()
    {
        var profile = new LaunchProfile(this);
        if (Interlocked.CompareExchange(ref _profile, profile, null) is not null)
        {
            throw new InvalidOperationException("A launch profile is already running on this device; stop it first.");
        }

        return profile;
    }

    /// <summary>Whether a <see cref="LaunchProfile"/> is running.</summary>
    public bool IsProfiling => _profile is not null;

    internal void EndProfile(LaunchProfile profile) => Interlocked.CompareExchange(ref _profile, null, profile);

    private readonly AsyncLocal<AcceleratorStream?> _stream = new();

    /// <summary>
    /// The stream this thread's (or async flow's) kernels, copies and allocations go to: the accelerator's default
    /// stream unless <see cref="UseStream"/> chose another. Memory freed on a stream is reused only by allocations on
    /// that stream, so work queued on different streams never races over a recycled block.
    /// </summary>
    public AcceleratorStream Stream => _stream.Value ?? Accelerator.DefaultStream;

    /// <summary>A new stream of this device (dispose it when done).</summary>
    public AcceleratorStream CreateStream() => Accelerator.CreateStream();

    /// <summary>Routes this flow's work to <paramref name="stream"/> until the returned scope is disposed.</summary>
    public IDisposable UseStream(AcceleratorStream stream)
    {
        ArgumentNullException.ThrowIfNull(stream);
        AcceleratorStream? previous = _stream.Value;
        _stream.Value = stream;
        return new StreamScope(this, previous);
    }

    private sealed class StreamScope(Device device, AcceleratorStream? previous) : IDisposable
    {
        public void Dispose() => device._stream.Value = previous;
    }

    private Native.Cublas? _blas;
    private volatile bool _blasProbed;

    /// <summary>
    /// Deterministic mode: every kernel the runtime picks is bit-reproducible run to run, whatever the streams. The
    /// runtime's own kernels always are (no float atomics; fixed summation orders); this mode also keeps
    /// <see cref="Ops.GemmPath.Auto"/> off cuBLAS, whose reproducibility depends on its workspace and stream setup.
    /// </summary>
    public bool Deterministic { get; set; }

    /// <summary>cuBLAS on this device (loaded on first use), or null on the CPU accelerator or where libcublas is absent.</summary>
    public Native.Cublas? Blas
    {
        get
        {
            if (_blasProbed)
            {
                return _blas; // every GEMM asks: no lock once probed
            }

            lock (_kernelLoads)
            {
                if (!_blasProbed)
                {
                    _blas = Native.Cublas.TryCreate(this);
                    _blasProbed = true;
                }

                return _blas;
            }
        }
    }

    /// <summary>What this device offers: driver, ISA, cuBLAS, graphs, tensor cores, compute dtype (loads cuBLAS if not yet).</summary>
    public DeviceCapabilities Capabilities
    {
        get
        {
            var cuda = Accelerator as CudaAccelerator;
            return new DeviceCapabilities(
                Kind, Accelerator.Name, cuda?.Architecture.ToString(), cuda is null ? null : $"{cuda.DriverVersion.Major}.{cuda.DriverVersion.Minor}",
                cuda?.InstructionSet.ToString(), cuda is null ? null : KernelCompilation.Name(Accelerator.Context.Properties.OptimizationLevel), Blas?.Library, cuda is not null && Native.CudaGraph.IsAvailable, HasTensorCoreMma, ComputeDtype, MemoryBytes);
        }
    }

    /// <summary>Whether the m16n8k16 bf16/f16 mma.sync instructions exist here (CUDA sm_80 and newer).</summary>
    public bool HasTensorCoreMma => Accelerator is CudaAccelerator cuda && cuda.Architecture is { } arch && arch.Major >= 8;

    /// <summary>Whether groups of four 32-lane warps fit (the tensor-core GEMM's shape; every CUDA GPU).</summary>
    internal bool CanHostTensorCoreTiles => Accelerator.WarpSize == 32 && Accelerator.MaxNumThreadsPerGroup >= Kernels.MmaGemmKernels.Threads;

    /// <summary>Launch geometry of the tensor-core GEMM for C [m, n]: one group per 64×64 tile, grid-stride beyond.</summary>
    internal KernelConfig TensorCoreTiles(int m, int n)
    {
        long tiles = (long)((m + Kernels.MmaGemmKernels.BlockM - 1) / Kernels.MmaGemmKernels.BlockM) * ((n + Kernels.MmaGemmKernels.BlockN - 1) / Kernels.MmaGemmKernels.BlockN);
        int groups = Kind == DeviceKind.Cuda ? Accelerator.NumMultiprocessors * 16 : Accelerator.NumMultiprocessors;
        return new KernelConfig(checked((int)Math.Max(1, Math.Min(tiles, groups))), Kernels.MmaGemmKernels.Threads);
    }

    /// <summary>The most threads per group (rows per tile) of tiled kernels that share memory within a group.</summary>
    internal int MaxTileSize => Kind == DeviceKind.Cuda ? 64 : Math.Min(64, Accelerator.MaxNumThreadsPerGroup);

    // CUDA grants 48 KiB of shared memory per group without an opt-in attribute (which ILGPU does not set).
    private const int SharedBytesWithoutOptIn = 48 * 1024;

    /// <summary>
    /// Rows per tile for a tiled kernel needing <paramref name="sharedFloatsPerRow"/> floats of shared memory per row:
    /// the largest power of two up to <see cref="MaxTileSize"/> whose tile fits in 48 KiB on CUDA.
    /// </summary>
    internal int TileSize(int sharedFloatsPerRow) => TileSize(MaxTileSize, Kind == DeviceKind.Cuda, sharedFloatsPerRow);

    internal static int TileSize(int maxTile, bool limitShared, int sharedFloatsPerRow)
    {
        int tile = maxTile;
        while (limitShared && tile > 1 && (long)tile * sharedFloatsPerRow * sizeof(float) > SharedBytesWithoutOptIn)
        {
            tile /= 2;
        }

        return tile;
    }

    /// <summary>Launch geometry of a tiled kernel over <paramref name="items"/> work items of <paramref name="tile"/> threads.</summary>
    internal KernelConfig Tiled(long items, int tile, int sharedFloats) =>
        new(checked((int)Math.Max(1, Math.Min(items, GroupCount))), tile, SharedMemoryConfig.RequestDynamic<float>(sharedFloats));

    /// <summary>Launch geometry of grid-stride kernels.</summary>
    internal KernelConfig GridStride => new(GroupCount, GroupSize);

    /// <summary>Waits for all queued work on every stream.</summary>
    public void Synchronize() => Accelerator.Synchronize();

    /// <summary>Releases the accelerator and context.</summary>
    public void Dispose()
    {
        _blas?.Dispose();
        Allocator.Dispose();
        Accelerator.Dispose();
        _context.Dispose();
    }

    /// <inheritdoc />
    public override string ToString() => Description;
}
