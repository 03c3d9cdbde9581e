namespace QLoRA.Runtime.Cpu;

/// <summary>
/// A 4-bit weight W [out, in] as the right-hand operand of a CPU GEMM, decoded while its panels are packed (no
/// dequantized copy of the weight beyond the panels themselves): op(W) = Wᵀ for the forward x·Wᵀ, or W for the input
/// gradient dy·W. Each value is code-table[code] × the block's absmax in float32, as the device kernels decode it; the
/// absmax comes already decoded (double quantization resolved once per weight).
/// </summary>
internal readonly unsafe struct FourBitPanelSource(byte* packed, float[] table, float[] absmax, int inFeatures, int blockSize, bool transposed) : IPanelSource
{
    public void Pack(int j0, int width, int k, int nr, float* dst)
    {
        if (transposed)
        {
            // op(W)[p, j] = W[j0 + j, p]: column j of the panel is row j0 + j of W, decoded front to back.
            for (int j = 0; j < nr; j++)
            {
                if (j >= width)
                {
                    for (int p = 0; p < k; p++)
                    {
                        dst[((long)p * nr) + j] = 0f;
                    }

                    continue;
                }

                long row = (long)(j0 + j) * inFeatures;
                for (int p = 0; p < k; p++)
                {
                    dst[((long)p * nr) + j] = Value(row + p);
                }
            }

            return;
        }

        // op(W)[p, j] = W[p, j0 + j]: row p of the panel is a contiguous run of row p of W.
        for (int p = 0; p < k; p++)
        {
            float* target = dst + ((long)p * nr);
            long first = ((long)p * inFeatures) + j0;
            for (int j = 0; j < width; j++)
            {
                target[j] = Value(first + j);
            }

            new Span<float>(target + width, nr - width).Clear();
        }
    }

    // Element e: its code is the high nibble of byte e/2 for even e, the low nibble for odd e.
    private float Value(long e)
    {
        int code = (packed[e >> 1] >> ((~(int)e & 1) << 2)) & 15;
        return table[code] * absmax[e / blockSize];
    }
}
