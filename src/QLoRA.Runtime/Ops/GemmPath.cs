namespace QLoRA.Runtime.Ops;

/// <summary>Which GEMM kernel <see cref="Gemm.Multiply"/> runs.</summary>
public enum GemmPath
{
    /// <summary>
    /// cuBLAS where it is loaded (CUDA), else tensor cores on sm_80+ for BF16/F16 operands, else the portable kernel; on
    /// the CPU accelerator, the blocked SIMD kernel (<see cref="Cpu"/>).
    /// For a 4-bit weight, cuBLAS means dequantizing it to a transient bf16 copy first (as bitsandbytes does); the
    /// benchmark measures that against the fused kernels, which decode inside the GEMM.
    /// </summary>
    Auto,

    /// <summary>The portable float32-accumulating tiled kernel (every dtype, every transpose, every accelerator).</summary>
    Portable,

    /// <summary>
    /// The mma.sync kernel (BF16/F16 operands, transposed operands read in place). On accelerators without inline PTX it runs the same tiling
    /// with scalar float32 products, which is how it is tested without a GPU.
    /// </summary>
    TensorCore,

    /// <summary>cuBLAS GemmEx (CUDA with libcublas only).</summary>
    Cublas,

    /// <summary>
    /// The CPU accelerator's blocked SIMD GEMM (packed panels, AVX-512/AVX2 FMA register tiles, parallel over row blocks),
    /// reading and writing the accelerator's host-memory buffers in place. What <see cref="Auto"/> runs there.
    /// </summary>
    Cpu,
}
