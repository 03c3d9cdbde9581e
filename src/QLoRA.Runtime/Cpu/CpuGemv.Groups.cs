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
        /// <summary>Batch rows one Block call takes at most (1…4: what the path's registers hold).</summary>
        static abstract int GroupRows { get; }

        static abstract void Block<TWeights, TRows>(byte* packed, float* table, float[] absmax, int blockSize, int inFeatures, RowGroup rows, int first, int o)
            where TWeights : struct, IRowCount
            where TRows : struct, IRowCount;
    }

    private struct Avx512Path : IGemvPath
    {
        public static int GroupRows => 4; // 16 accumulators (4 weight × 4 batch rows) of 32 registers

        public static void Block<TWeights, TRows>(byte* packed, float* table, float[] absmax, int blockSize, int inFeatures, RowGroup rows, int first, int o)
            where TWeights : struct, IRowCount
            where TRows : struct, IRowCount => BlockAvx512<TWeights, TRows>(packed, table, absmax, blockSize, inFeatures, rows, first, o);
    }

    private struct Avx2Path : IGemvPath
    {
        public static int GroupRows => 2; // 16 registers: the tables, 8 accumulators and the decode

        public static void Block<TWeights, TRows>(byte* packed, float* table, float[] absmax, int blockSize, int inFeatures, RowGroup rows, int first, int o)
            where TWeights : struct, IRowCount
            where TRows : struct, IRowCount => BlockAvx2<TWeights, TRows>(packed, table, absmax, blockSize, inFeatures, rows, first, o);
    }

    // Rows [first, end) of W against every row of x. Weight rows go by four (or one) and, within each, batch rows by
    // groups of at most TPath.GroupRows (the path's register budget): a weight row's packed bytes are read from memory once,
    // the later batch groups finding them in L1. Each (weight row, batch row) sum is the same whatever the grouping.
    private static void WeightRows<TPath>(byte* packed, float* table, float[] absmax, int blockSize, int inFeatures, float* xs, float* sums, int batch, int first, int end)
        where TPath : struct, IGemvPath
    {
        int o = first;
        if (inFeatures % blockSize == 0)
        {
            // Blocks start at the same column in every weight row: four rows share one block loop.
            for (; o + 4 <= end; o += 4)
            {
                BatchGroups<TPath, Rows4>(packed, table, absmax, blockSize, inFeatures, xs, sums, batch, first, o);
            }
        }

        for (; o < end; o++)
        {
            BatchGroups<TPath, Rows1>(packed, table, absmax, blockSize, inFeatures, xs, sums, batch, first, o);
        }
    }

    private static void BatchGroups<TPath, TWeights>(byte* packed, float* table, float[] absmax, int blockSize, int inFeatures, float* xs, float* sums, int batch, int first, int o)
        where TPath : struct, IGemvPath
        where TWeights : struct, IRowCount
    {
        int groupRows = TPath.GroupRows;
        for (int r0 = 0; r0 < batch; r0 += groupRows)
        {
            var rows = new RowGroup(xs + ((long)r0 * inFeatures), sums + r0, batch);
            switch (Math.Min(groupRows, batch - r0))
            {
                case 1: TPath.Block<TWeights, Rows1>(packed, table, absmax, blockSize, inFeatures, rows, first, o); break;
                case 2: TPath.Block<TWeights, Rows2>(packed, table, absmax, blockSize, inFeatures, rows, first, o); break;
                case 3: TPath.Block<TWeights, Rows3>(packed, table, absmax, blockSize, inFeatures, rows, first, o); break;
                default: TPath.Block<TWeights, Rows4>(packed, table, absmax, blockSize, inFeatures, rows, first, o); break;
            }
        }
    }
}
