using QLoRA.Core;

namespace QLoRA.Runtime.Cpu;

/// <summary>The element types the CPU kernels read and write.</summary>
internal enum CpuElement
{
    F32,
    BF16,
    F16,
}

/// <summary>
/// A row-major matrix in host memory (the CPU accelerator's buffers are host memory: no copies), read as op(M): itself, or
/// its transpose when <see cref="Transposed"/>.
/// </summary>
/// <param name="data">The first element.</param>
/// <param name="element">Its element type.</param>
/// <param name="ld">Elements per stored row.</param>
/// <param name="transposed">Read element (i, k) at [k, i].</param>
internal readonly unsafe struct CpuMatrix(void* data, CpuElement element, int ld, bool transposed)
{
    public void* Data { get; } = data;

    public CpuElement Element { get; } = element;

    public int Ld { get; } = ld;

    public bool Transposed { get; } = transposed;

    /// <summary>The CPU element type of a compute dtype.</summary>
    /// <exception cref="ArgumentException">Not F32, BF16 or F16.</exception>
    public static CpuElement ElementOf(DType dtype) => dtype switch
    {
        DType.F32 => CpuElement.F32,
        DType.BF16 => CpuElement.BF16,
        DType.F16 => CpuElement.F16,
        _ => throw new ArgumentException($"{dtype} is not a compute dtype.", nameof(dtype)),
    };

    /// <summary>op(M)[i, k] as float32 (exact for all three element types).</summary>
    public float Get(long i, long k)
    {
        long index = Transposed ? (k * Ld) + i : (i * Ld) + k;
        return Element switch
        {
            CpuElement.F32 => ((float*)Data)[index],
            CpuElement.BF16 => BitConverter.Int32BitsToSingle(((ushort*)Data)[index] << 16),
            _ => (float)BitConverter.UInt16BitsToHalf(((ushort*)Data)[index]),
        };
    }
}
