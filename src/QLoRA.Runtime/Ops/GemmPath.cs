namespace QLoRA.Runtime.Ops;

/// <summary>Which GEMM kernel <see cref="Gemm.Multiply"/> runs.</summary>
public enum GemmPath
{
    /// <summary>Tensor cores on CUDA sm_80+ for BF16/F16 operands (any transposes), else the portable tiled kernel.</summary>
    Auto,

    /// <summary>The portable float32-accumulating tiled kernel (every dtype, every transpose, every accelerator).</summary>
    Portable,

    /// <summary>
    /// The mma.sync kernel (BF16/F16 operands, transposed operands read in place). On accelerators without inline PTX it runs the same tiling
    /// with scalar float32 products, which is how it is tested without a GPU.
    /// </summary>
    TensorCore,
}
