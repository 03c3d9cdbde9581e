namespace QLoRA.Runtime.Devices;

/// <summary>
/// What a device offers the runtime, for diagnostics (<c>qlora</c>'s and the benchmarks' first lines): which
/// accelerator, which CUDA driver and PTX ISA ILGPU compiles for, which of the native paths load (cuBLAS, CUDA graphs,
/// tensor-core mma.sync) and the compute dtype models load in.
/// </summary>
/// <param name="Kind">CUDA or CPU.</param>
/// <param name="Name">The accelerator's name.</param>
/// <param name="Architecture">The CUDA compute capability ("SM_90"), or null on the CPU accelerator.</param>
/// <param name="DriverVersion">The CUDA driver's version ("13.0"), or null on the CPU accelerator.</param>
/// <param name="InstructionSet">The PTX ISA kernels are compiled for ("ISA_88"), or null on the CPU accelerator.</param>
/// <param name="KernelOptimization">ILGPU's optimization level for CUDA kernels ("O2"), or null on the CPU accelerator.</param>
/// <param name="CublasLibrary">The cuBLAS library file that loaded, or null where none did (GEMMs then use the runtime's own kernels).</param>
/// <param name="CudaGraphs">Whether the driver's graph entry points loaded (decode steps can be captured).</param>
/// <param name="TensorCoreMma">Whether bf16/f16 m16n8k16 mma.sync exists (sm_80+).</param>
/// <param name="ComputeDtype">The dtype of activations of models loaded now.</param>
/// <param name="MemoryBytes">Device memory in bytes.</param>
public sealed record DeviceCapabilities(
    DeviceKind Kind, string Name, string? Architecture, string? DriverVersion, string? InstructionSet, string? KernelOptimization, string? CublasLibrary,
    bool CudaGraphs, bool TensorCoreMma, QLoRA.Core.DType ComputeDtype, long MemoryBytes)
{
    /// <summary>One line per capability, "name: value".</summary>
    public override string ToString() => string.Join(Environment.NewLine,
        Kind == DeviceKind.Cuda ? $"device: CUDA {Name}, {MemoryBytes / (1024.0 * 1024 * 1024):F1} GiB" : $"device: {Name} (host memory)",
        $"architecture: {Architecture ?? "n/a"}; driver: {DriverVersion ?? "n/a"}; PTX ISA: {InstructionSet ?? "n/a"}; kernel optimization: {KernelOptimization ?? "n/a"}",
        $"cuBLAS: {CublasLibrary ?? "not loaded"}; CUDA graphs: {(CudaGraphs ? "yes" : "no")}; tensor-core mma.sync: {(TensorCoreMma ? "yes" : "no")}",
        $"compute dtype: {ComputeDtype}");
}
