using ILGPU;

namespace QLoRA.Runtime.Devices;

/// <summary>
/// How ILGPU compiles kernels for CUDA: its algorithms library (math intrinsics) and optimization level O2 unless
/// <c>QLORA_KERNEL_OPTIMIZATION=O1</c> (or <c>O0</c>) asks otherwise. O2 is the default because its address-space
/// inference turns ILGPU's generic loads and stores into <c>ld/st.global</c>; with generic ones (O1), ptxas cannot rule out
/// that a store aliases a local variable, so it keeps every inline-PTX operand slot in local memory — ptxas 11.8 for
/// sm_90 reports 448 bytes of stack and 184 local loads/stores in the tensor-core GEMM at O1, none at O2, and the
/// attention kernels' local traffic falls 4× (docs/gpu.md, "Kernel compilation"). The CPU accelerator runs the kernels'
/// IL directly and is not affected by the level.
/// </summary>
internal static class KernelCompilation
{
    public const string EnvironmentVariable = "QLORA_KERNEL_OPTIMIZATION";

    /// <summary>The level QLORA_KERNEL_OPTIMIZATION asks for (O2 when unset).</summary>
    /// <exception cref="DeviceNotAvailableException">The variable holds something other than O0, O1 or O2.</exception>
    public static OptimizationLevel Level => Parse(Environment.GetEnvironmentVariable(EnvironmentVariable));

    internal static OptimizationLevel Parse(string? value) => value?.Trim().ToUpperInvariant() switch
    {
        null or "" or "O2" => OptimizationLevel.O2,
        "O1" => OptimizationLevel.O1,
        "O0" => OptimizationLevel.O0,
        _ => throw new DeviceNotAvailableException($"{EnvironmentVariable}='{value}' is not 'O0', 'O1' or 'O2'."),
    };

    /// <summary>"O0", "O1" or "O2" (the enum's own names alias O0/O1 as Debug/Release).</summary>
    public static string Name(OptimizationLevel level) => level switch { OptimizationLevel.O2 => "O2", OptimizationLevel.O1 => "O1", _ => "O0" };

    /// <summary>The context settings every CUDA device (and the PTX tests) compiles with.</summary>
    public static Context.Builder Configure(Context.Builder builder) => builder.EnableAlgorithms().Optimize(Level);
}
