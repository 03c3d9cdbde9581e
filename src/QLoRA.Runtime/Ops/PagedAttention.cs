using ILGPU;
using ILGPU.Runtime;
using QLoRA.Core;
using QLoRA.Runtime.Generation;
using QLoRA.Runtime.Kernels;
using QLoRA.Runtime.Tensors;
using Device = QLoRA.Runtime.Devices.Device;

namespace QLoRA.Runtime.Ops;

/// <summary>
/// Where the query rows of one step sit in a <see cref="KvCache"/>: each row's sequence (an index into the block
/// tables) and absolute position, on the device.
/// </summary>
/// <param name="BlockTables">I32 [sequences, maxPages]: each sequence's pages in position order (−1: not held).</param>
/// <param name="RowSequence">I32 [rows]: the block-table row of each query row.</param>
/// <param name="RowPosition">I32 [rows]: each row's position in its sequence (its key/value goes there).</param>
public sealed record PagedRows(DeviceTensor BlockTables, DeviceTensor RowSequence, DeviceTensor RowPosition)
{
    /// <summary>Query rows.</summary>
    public int Rows => checked((int)RowSequence.Shape[0]);

    /// <summary>Block-table width.</summary>
    public int MaxPages => checked((int)BlockTables.Shape[1]);
}

/// <summary>
/// Attention against a paged KV cache (see <see cref="PagedAttentionKernels"/>): <see cref="Write"/> stores new rows'
/// keys and values at their positions, then <see cref="Forward"/> lets every query row attend to its sequence's cached
/// keys up to its own position — decode, multi-token decode and chunked prefill alike. Head dimension up to 256.
/// </summary>
public static class PagedAttention
{
    /// <summary>Writes k, v [rows, kvHeads, d] into layer <paramref name="layer"/> of the cache at each row's position.</summary>
    /// <exception cref="ArgumentException">Shapes or dtypes disagree with the cache.</exception>
    public static void Write(DeviceTensor k, DeviceTensor v, KvCache cache, int layer, PagedRows rows)
    {
        PagedAttentionShape s = Check(k, cache, rows, heads: cache.KeyValueHeads, window: 0, scale: 1f);
        Shapes.Require(v, k.Dtype, k.Shape, nameof(v));
        if (Cpu.CpuOps.Runs(k))
        {
            Cpu.CpuPagedAttention.Write(k, v, cache.Keys(layer), cache.Values(layer), rows, s);
            return;
        }

        ComputeDispatch.Run(k, new WriteLaunch(k, v, cache.Keys(layer), cache.Values(layer), rows, s), nameof(k));
    }

    /// <summary>o = softmax(scale·q kᵀ) v of each row against its sequence's cached keys 0…position (within the window).</summary>
    /// <param name="q">[rows, heads, d] of the cache's dtype.</param>
    /// <param name="cache">The pool; the rows' own keys must already be written.</param>
    /// <param name="layer">The layer.</param>
    /// <param name="rows">Each row's sequence and position.</param>
    /// <param name="o">[rows, heads, d], written.</param>
    /// <exception cref="ArgumentException">Shapes or dtypes disagree.</exception>
    public static void Forward(DeviceTensor q, KvCache cache, int layer, PagedRows rows, DeviceTensor o)
    {
        int heads = q.Shape.Count == 3 ? checked((int)q.Shape[1]) : 0;
        PagedAttentionShape s = Check(q, cache, rows, heads, cache.SlidingWindow, 1f / MathF.Sqrt(cache.HeadDim));
        Shapes.Require(o, q.Dtype, q.Shape, nameof(o));
        if (Cpu.CpuOps.Runs(q))
        {
            Cpu.CpuPagedAttention.Attend(q, cache.Keys(layer), cache.Values(layer), rows, o, s);
            return;
        }

        ComputeDispatch.Run(q, new AttendLaunch(q, cache.Keys(layer), cache.Values(layer), rows, o, s), nameof(q));
    }

    private static PagedAttentionShape Check(DeviceTensor x, KvCache cache, PagedRows rows, int heads, int window, float scale)
    {
        if (x.Shape.Count != 3 || x.Shape[2] != cache.HeadDim || x.Shape[0] != rows.Rows)
        {
            throw new ArgumentException($"Expected [{rows.Rows}, heads, {cache.HeadDim}]; got [{string.Join(", ", x.Shape)}].", nameof(x));
        }

        if (x.Dtype != cache.Dtype)
        {
            throw new ArgumentException($"The rows are {x.Dtype}; the cache holds {cache.Dtype}.", nameof(x));
        }

        if (heads == 0 || heads % cache.KeyValueHeads != 0 || cache.HeadDim > AttentionKernels.MaxHeadDim)
        {
            throw new ArgumentException($"{heads} heads of dimension {cache.HeadDim} do not fit {cache.KeyValueHeads} key/value heads (head dimension ≤ {AttentionKernels.MaxHeadDim}).", nameof(x));
        }

        Shapes.Require(rows.RowPosition, DType.I32, [rows.Rows], nameof(rows.RowPosition));
        if (rows.BlockTables.Dtype != DType.I32 || rows.BlockTables.Shape.Count != 2)
        {
            throw new ArgumentException("Block tables are I32 [sequences, maxPages].", nameof(rows));
        }

        return new PagedAttentionShape(rows.Rows, heads, cache.KeyValueHeads, cache.HeadDim, scale, window, cache.PageTokens, rows.MaxPages);
    }

    // Warps per group: the key axis is split over them (4 on a GPU: 128 threads per (row, head)).
    internal static int Warps(Device device) => Math.Max(1, Math.Min(4, device.Accelerator.MaxNumThreadsPerGroup / device.Accelerator.WarpSize));

    private readonly record struct AttendLaunch(DeviceTensor Q, DeviceTensor Keys, DeviceTensor Values, PagedRows Rows, DeviceTensor O, PagedAttentionShape Shape) : IComputeLaunch
    {
        public void Run<T, TE>()
            where T : unmanaged
            where TE : struct, IElement<T>
        {
            Device device = Q.Device;
            var kernel = device.Kernel(static a => a.LoadKernel<ArrayView<T>, ArrayView<T>, ArrayView<T>, ArrayView<int>, ArrayView<int>, ArrayView<int>, ArrayView<T>, PagedAttentionShape>(PagedAttentionKernels.Attend<T, TE>));
            int warps = Warps(device);
            var config = new KernelConfig(
                checked((int)Math.Max(1, Math.Min((long)Shape.Rows * Shape.Heads, device.GroupCount))),
                warps * device.Accelerator.WarpSize,
                SharedMemoryConfig.RequestDynamic<float>(PagedAttentionKernels.SharedFloats(warps, Shape.HeadDim)));
            kernel(device.Stream, config, Q.View<T>(), Keys.View<T>(), Values.View<T>(), Rows.BlockTables.View<int>(), Rows.RowSequence.View<int>(), Rows.RowPosition.View<int>(), O.View<T>(), Shape);
        }
    }

    private readonly record struct WriteLaunch(DeviceTensor K, DeviceTensor V, DeviceTensor Keys, DeviceTensor Values, PagedRows Rows, PagedAttentionShape Shape) : IComputeLaunch
    {
        public void Run<T, TE>()
            where T : unmanaged
            where TE : struct, IElement<T>
        {
            Device device = K.Device;
            var kernel = device.Kernel(static a => a.LoadKernel<ArrayView<T>, ArrayView<T>, ArrayView<T>, ArrayView<T>, ArrayView<int>, ArrayView<int>, ArrayView<int>, PagedAttentionShape>(PagedAttentionKernels.Write<T>));
            kernel(device.Stream, device.GridStride, K.View<T>(), V.View<T>(), Keys.View<T>(), Values.View<T>(), Rows.BlockTables.View<int>(), Rows.RowSequence.View<int>(), Rows.RowPosition.View<int>(), Shape);
        }
    }
}
