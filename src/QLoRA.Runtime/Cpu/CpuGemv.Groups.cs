namespace QLoRA.Runtime.Cpu;

/// <summary>
/// What the GEMV's vector paths share: batch rows handled in groups whose size is a compile-time constant, and weight
/// rows walked four at a time when their absmax blocks start at the same columns (else one at a time).
/// </summary>
internal static unsafe partial class CpuGemv
{
    /// <summary>Rows handled together (a compile-time constant per instantiation: the JIT drops the unused ones).</summary>
    private interface IRowCount
    {
        static abstract int Count { get; }
    }

    private struct Rows1 : IRowCount { public static int Count => 1; }

    private struct Rows2 : IRowCount { public static int Count => 2; }

    private struct Rows3 : IRowCount { public static int Count => 3; }

    private struct Rows4 : IRowCount { public static int Count => 4; }

    /// <param name="x">The group's first row of the permuted x (rows in_features apart).</param>
    /// <param name="sums">Where the group's first row's sum for weight row <c>first</c> goes.</param>
    /// <param name="stride">Floats between the sums of consecutive weight rows (the whole batch).</param>
    private readonly struct RowGroup(float* x, float* sums, int stride)
    {
        public readonly float* X = x;
        public readonly float* Sums = sums;
        public readonly int Stride = stride;
    }

    /// <summary>A vector path's kernel for a group of weight rows (four sharing block boundaries, or one).</summary>
    private interface IGemvPath
    {
        static abstract void Block<TWeights, TRows>(byte* packed, float* table, float[] absmax, int blockSize, int inFeatures, RowGroup rows, int first, int o)
            where TWeights : struct, IRowCount
            where TRows : struct, IRowCount;
    }

    private struct Avx512Path : IGemvPath
    {
        public static void Block<TWeights, TRows>(byte* packed, float* table, float[] absmax, int blockSize, int inFeatures, RowGroup rows, int first, int o)
            where TWeights : struct, IRowCount
            where TRows : struct, IRowCount => BlockAvx512<TWeights, TRows>(packed, table, absmax, blockSize, inFeatures, rows, first, o);
    }

    private struct Avx2Path : IGemvPath
    {
        public static void Block<TWeights, TRows>(byte* packed, float* table, float[] absmax, int blockSize, int inFeatures, RowGroup rows, int first, int o)
            where TWeights : struct, IRowCount
            where TRows : struct, IRowCount => BlockAvx2<TWeights, TRows>(packed, table, absmax, blockSize, inFeatures, rows, first, o);
    }

    private static void WeightRows<TPath, TRows>(byte* packed, float* table, float[] absmax, int blockSize, int inFeatures, RowGroup rows, int first, int end)
        where TPath : struct, IGemvPath
        where TRows : struct, IRowCount
    {
        int o = first;
        if (inFeatures % blockSize == 0)
        {
            // Blocks start at the same column in every weight row: four rows share one block loop.
            for (; o + 4 <= end; o += 4)
            {
                TPath.Block<Rows4, TRows>(packed, table, absmax, blockSize, inFeatures, rows, first, o);
            }
        }

        for (; o < end; o++)
        {
            TPath.Block<Rows1, TRows>(packed, table, absmax, blockSize, inFeatures, rows, first, o);
        }
    }
}
