namespace QLoRA.Runtime.Cpu;

/// <summary>
/// The right-hand operand of a CPU GEMM, op(B) [K, N], as it is packed: for columns [j0, j0 + width) and every k, the
/// values op(B)[k, j0..] as float32 at <c>dst[k·nr + j]</c>, columns past <c>width</c> zero. Dense matrices and 4-bit
/// weights (decoded while packing) implement it.
/// </summary>
internal unsafe interface IPanelSource
{
    /// <summary>Packs op(B)[0..k, j0..j0+width) into a k × <paramref name="nr"/> panel.</summary>
    void Pack(int j0, int width, int k, int nr, float* dst);
}

/// <summary>A dense op(B) as a panel source.</summary>
internal readonly unsafe struct DensePanelSource(CpuMatrix b) : IPanelSource
{
    public void Pack(int j0, int width, int k, int nr, float* dst)
    {
        if (b.Transposed && b.Element == CpuElement.F32)
        {
            // op(B) = Bᵀ (the forward x·Wᵀ): column j of the panel is row j0 + j of B, read once, front to back.
            for (int j = 0; j < nr; j++)
            {
                float* src = (float*)b.Data + ((long)(j0 + j) * b.Ld);
                for (int p = 0; p < k; p++)
                {
                    dst[((long)p * nr) + j] = j < width ? src[p] : 0f;
                }
            }

            return;
        }

        for (int p = 0; p < k; p++)
        {
            float* row = dst + ((long)p * nr);
            if (!b.Transposed && b.Element == CpuElement.F32)
            {
                // op(B) = B: row p of the panel is contiguous in B.
                new ReadOnlySpan<float>((float*)b.Data + ((long)p * b.Ld) + j0, width).CopyTo(new Span<float>(row, width));
            }
            else
            {
                for (int j = 0; j < width; j++)
                {
                    row[j] = b.Get(p, j0 + j);
                }
            }

            new Span<float>(row + width, nr - width).Clear();
        }
    }
}
