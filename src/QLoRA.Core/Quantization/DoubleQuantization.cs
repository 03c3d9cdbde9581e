namespace QLoRA.Core.Quantization;

/// <summary>
/// Double quantization of absmax constants, as bitsandbytes' <c>quantize_4bit(compress_statistics=True)</c>:
/// <c>offset = mean(absmax)</c>; <c>absmax − offset</c> is quantized in blocks of 256 to 8-bit codes of the signed
/// dynamic map, each nested block keeping a float32 absmax.
/// </summary>
public static class DoubleQuantization
{
    /// <summary>Compresses float32 absmax values.</summary>
    /// <param name="absmax">One absmax per 4-bit block; finite.</param>
    /// <param name="nestedBlockSize">Codes per nested block (bitsandbytes: 256).</param>
    /// <exception cref="ArgumentException">The input is empty or not finite.</exception>
    public static DoubleQuantizedAbsmax Compress(ReadOnlySpan<float> absmax, int nestedBlockSize = BlockwiseLayout.NestedBlockSize)
    {
        if (absmax.IsEmpty)
        {
            throw new ArgumentException("There are no absmax values to compress.", nameof(absmax));
        }

        ArgumentOutOfRangeException.ThrowIfLessThan(nestedBlockSize, 1);

        // The mean in double, rounded once: the closest float32 to the true mean.
        double sum = 0;
        foreach (float a in absmax)
        {
            if (!float.IsFinite(a))
            {
                throw new ArgumentException($"Absmax value {a} is not finite.", nameof(absmax));
            }

            sum += a;
        }

        float offset = (float)(sum / absmax.Length);
        int nestedBlocks = (int)BlockwiseLayout.BlockCount(absmax.Length, nestedBlockSize);
        var codes = new byte[absmax.Length];
        var nestedAbsmax = new float[nestedBlocks];
        unsafe
        {
            fixed (float* source = absmax)
            fixed (byte* destination = codes)
            {
                var job = new NestedJob(source, absmax.Length, offset, nestedBlockSize, destination, nestedAbsmax);
                BlockwiseQuantizer.RunBlocks(nestedBlocks, nestedBlockSize, job.Run);
            }
        }

        return new DoubleQuantizedAbsmax(codes, nestedAbsmax, DynamicMap.Signed.ToArray(), nestedBlockSize, offset);
    }

    private sealed unsafe class NestedJob(float* source, int count, float offset, int nestedBlockSize, byte* codes, float[] nestedAbsmax)
    {
        [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
        public void Run(int firstBlock, int endBlock)
        {
            DynamicMap.Searcher searcher = DynamicMap.SignedSearcher;
            for (int nb = firstBlock; nb < endBlock; nb++)
            {
                int start = nb * nestedBlockSize;
                int length = Math.Min(nestedBlockSize, count - start);
                float max = 0f;
                for (int i = start; i < start + length; i++)
                {
                    max = Math.Max(max, MathF.Abs(source[i] - offset));
                }

                nestedAbsmax[nb] = max;
                if (max == 0f)
                {
                    new Span<byte>(codes + start, length).Fill(DynamicMap.SignedZeroCode);
                }
                else
                {
                    searcher.Quantize(source + start, length, offset, 1f / max, codes + start);
                }
            }
        }
    }
}
