using ILGPU;
using ILGPU.Runtime;
using QLoRA.Core;
using QLoRA.Runtime.Kernels;
using QLoRA.Runtime.Tensors;
using Device = QLoRA.Runtime.Devices.Device;

namespace QLoRA.Runtime.Ops;

/// <summary>
/// Residual add, bias add, dtype conversion and embedding lookup on device tensors of a compute dtype (F32, BF16 or F16;
/// arithmetic in float32, results rounded to the tensor's dtype). Biases and parameter gradients are F32.
/// </summary>
public static class Elementwise
{
    /// <summary>y = a + b (y may alias a or b), all of one compute dtype.</summary>
    /// <exception cref="ArgumentException">Shapes or dtypes disagree.</exception>
    public static void Add(DeviceTensor a, DeviceTensor b, DeviceTensor y)
    {
        Shapes.Require(b, a.Dtype, a.Shape, nameof(b));
        Shapes.Require(y, a.Dtype, a.Shape, nameof(y));
        if (Cpu.CpuOps.Runs(a))
        {
            Cpu.CpuRowOps.Add(a, b, y);
            return;
        }

        ComputeDispatch.Run(a, new AddLaunch(a, b, y), nameof(a));
    }

    /// <summary>y = x in another compute dtype (bf16 and f16 round to nearest even).</summary>
    /// <param name="x">F32, BF16 or F16.</param>
    /// <param name="y">F32, BF16 or F16 of the same shape, written.</param>
    /// <exception cref="ArgumentException">Shapes differ or a dtype is not a compute dtype.</exception>
    public static void Convert(DeviceTensor x, DeviceTensor y)
    {
        Shapes.Require(y, y.Dtype, x.Shape, nameof(y));
        ComputeDispatch.Run(x, new ConvertLaunch(x, y), nameof(x));
    }

    /// <summary>A new tensor holding <paramref name="x"/> in <paramref name="dtype"/>.</summary>
    public static DeviceTensor ConvertTo(DeviceTensor x, DType dtype)
    {
        DeviceTensor y = DeviceTensor.Allocate(x.Device, dtype, [.. x.Shape]);
        Convert(x, y);
        return y;
    }

    /// <summary>y[r, :] += bias for every row (a linear layer's bias).</summary>
    /// <exception cref="ArgumentException">Shapes or dtypes disagree.</exception>
    public static void AddBias(DeviceTensor y, DeviceTensor bias)
    {
        if (y.Shape.Count != 2)
        {
            throw new ArgumentException($"y must be [rows, dim], not [{string.Join(", ", y.Shape)}].", nameof(y));
        }

        Shapes.Require(bias, DType.F32, [y.Shape[1]], nameof(bias));
        ComputeDispatch.Run(y, new AddBiasLaunch(y, bias), nameof(y));
    }

    /// <summary>Embedding lookup: y[t] = table[ids[t]].</summary>
    /// <param name="table">[vocab, dim] of a compute dtype.</param>
    /// <param name="ids">Token ids, each in [0, vocab).</param>
    /// <param name="y">[ids.Length, dim] of the table's dtype.</param>
    /// <exception cref="ArgumentOutOfRangeException">An id is outside the vocabulary (named with its position).</exception>
    public static void Embedding(DeviceTensor table, ReadOnlySpan<int> ids, DeviceTensor y)
    {
        if (table.Shape.Count != 2)
        {
            throw new ArgumentException($"table must be [vocab, dim], not [{string.Join(", ", table.Shape)}].", nameof(table));
        }

        long vocab = table.Shape[0];
        int dim = checked((int)table.Shape[1]);
        for (int t = 0; t < ids.Length; t++)
        {
            if ((uint)ids[t] >= vocab)
            {
                throw new ArgumentOutOfRangeException(nameof(ids), $"Token {t} has id {ids[t]}, outside the vocabulary of {vocab}.");
            }
        }

        Shapes.Require(y, table.Dtype, [ids.Length, dim], nameof(y));
        if (Cpu.CpuOps.Runs(table))
        {
            Cpu.CpuOps.Gather(table, ids, y, dim);
            return;
        }

        using DeviceTensor idTensor = DeviceTensor.FromHost(table.Device, ids, DType.I32, ids.Length);
        ComputeDispatch.Run(table, new GatherLaunch(table, idTensor, y, ids.Length, dim), nameof(table));
        // Freed blocks are reused only by later work on the same (default) stream, so no synchronization is needed.
    }

    /// <summary>
    /// y[t] = table[ids[t]] with the ids already on the device (<paramref name="deviceIds"/>, I32) — nothing is
    /// uploaded or allocated, so the launch can be captured in a CUDA graph; the CPU schedule reads
    /// <paramref name="hostIds"/>, the same ids. Ids must already be checked against the table.
    /// </summary>
    internal static void GatherRows(DeviceTensor table, DeviceTensor deviceIds, ReadOnlySpan<int> hostIds, DeviceTensor y)
    {
        int dim = checked((int)table.Shape[1]);
        Shapes.Require(y, table.Dtype, [hostIds.Length, dim], nameof(y));
        if (Cpu.CpuOps.Runs(table))
        {
            Cpu.CpuOps.Gather(table, hostIds, y, dim);
            return;
        }

        ComputeDispatch.Run(table, new GatherLaunch(table, deviceIds, y, hostIds.Length, dim), nameof(table));
    }

    /// <summary>
    /// Embedding backward: dTable[ids[t]] += dy[t] for every token, deterministic (tokens grouped by id on the host,
    /// each row summed in token order; no atomics).
    /// </summary>
    /// <param name="dy">[tokens, dim] of a compute dtype.</param>
    /// <param name="ids">Token ids.</param>
    /// <param name="dTable">F32 [vocab, dim], accumulated into.</param>
    /// <exception cref="ArgumentOutOfRangeException">An id is outside the vocabulary.</exception>
    public static void EmbeddingBackward(DeviceTensor dy, ReadOnlySpan<int> ids, DeviceTensor dTable)
    {
        long vocab = dTable.Shape[0];
        int dim = checked((int)dTable.Shape[1]);
        Shapes.Require(dy, dy.Dtype, [ids.Length, dim], nameof(dy));
        Shapes.Require(dTable, DType.F32, dTable.Shape, nameof(dTable));
        int[] order = new int[ids.Length];
        for (int t = 0; t < ids.Length; t++)
        {
            if ((uint)ids[t] >= vocab)
            {
                throw new ArgumentOutOfRangeException(nameof(ids), $"Token {t} has id {ids[t]}, outside the vocabulary of {vocab}.");
            }

            order[t] = t;
        }

        int[] keys = ids.ToArray();
        Array.Sort(keys, order); // stable enough: equal ids keep no particular order, so sort by (id, token) below
        for (int start = 0; start < order.Length;)
        {
            int end = start;
            while (end < order.Length && keys[end] == keys[start])
            {
                end++;
            }

            Array.Sort(order, start, end - start); // token order within an id: a fixed summation order
            start = end;
        }

        var starts = new List<int>();
        var uniqueIds = new List<int>();
        for (int k = 0; k < keys.Length; k++)
        {
            if (k == 0 || keys[k] != keys[k - 1])
            {
                starts.Add(k);
                uniqueIds.Add(keys[k]);
            }
        }

        starts.Add(keys.Length);
        if (uniqueIds.Count == 0)
        {
            return;
        }

        if (Cpu.CpuOps.Runs(dy))
        {
            Cpu.CpuOps.ScatterAddSorted(dy, order, starts, uniqueIds, dTable, dim);
            return;
        }

        Device device = dy.Device;
        using DeviceTensor orderTensor = DeviceTensor.FromHost<int>(device, order, DType.I32, order.Length);
        using DeviceTensor startTensor = DeviceTensor.FromHost<int>(device, starts.ToArray(), DType.I32, starts.Count);
        using DeviceTensor idTensor = DeviceTensor.FromHost<int>(device, uniqueIds.ToArray(), DType.I32, uniqueIds.Count);
        ComputeDispatch.Run(dy, new ScatterLaunch(dy, orderTensor, startTensor, idTensor, dTable, uniqueIds.Count, dim), nameof(dy));
    }

    private readonly record struct AddLaunch(DeviceTensor A, DeviceTensor B, DeviceTensor Y) : IComputeLaunch
    {
        public void Run<T, TE>()
            where T : unmanaged
            where TE : struct, IElement<T>
        {
            Device device = A.Device;
            var kernel = device.Kernel(static acc => acc.LoadKernel<ArrayView<T>, ArrayView<T>, ArrayView<T>, long>(ElementwiseKernels.Add<T, TE>));
            kernel(device.Stream, device.GridStride, A.View<T>(), B.View<T>(), Y.View<T>(), A.ElementCount);
        }
    }

    private readonly record struct AddBiasLaunch(DeviceTensor Y, DeviceTensor Bias) : IComputeLaunch
    {
        public void Run<T, TE>()
            where T : unmanaged
            where TE : struct, IElement<T>
        {
            Device device = Y.Device;
            var kernel = device.Kernel(static a => a.LoadKernel<ArrayView<T>, ArrayView<float>, long, int>(ElementwiseKernels.AddRowVector<T, TE>));
            kernel(device.Stream, device.GridStride, Y.View<T>(), Bias.View<float>(), Y.Shape[0], checked((int)Y.Shape[1]));
        }
    }

    private readonly record struct GatherLaunch(DeviceTensor Table, DeviceTensor Ids, DeviceTensor Y, int Tokens, int Dim) : IComputeLaunch
    {
        public void Run<T, TE>()
            where T : unmanaged
            where TE : struct, IElement<T>
        {
            Device device = Table.Device;
            var kernel = device.Kernel(static a => a.LoadKernel<ArrayView<T>, ArrayView<int>, ArrayView<T>, int, int>(ElementwiseKernels.Gather<T>));
            kernel(device.Stream, device.GridStride, Table.View<T>(), Ids.View<int>(), Y.View<T>(), Tokens, Dim);
        }
    }

    private readonly record struct ScatterLaunch(DeviceTensor Dy, DeviceTensor Order, DeviceTensor Starts, DeviceTensor Ids, DeviceTensor DTable, int Segments, int Dim) : IComputeLaunch
    {
        public void Run<T, TE>()
            where T : unmanaged
            where TE : struct, IElement<T>
        {
            Device device = Dy.Device;
            var kernel = device.Kernel(static a => a.LoadKernel<ArrayView<T>, ArrayView<int>, ArrayView<int>, ArrayView<int>, ArrayView<float>, int, int>(ElementwiseKernels.ScatterAddSorted<T, TE>));
            kernel(device.Stream, device.GridStride, Dy.View<T>(), Order.View<int>(), Starts.View<int>(), Ids.View<int>(), DTable.View<float>(), Segments, Dim);
        }
    }

    private readonly record struct ConvertLaunch(DeviceTensor X, DeviceTensor Y) : IComputeLaunch
    {
        public void Run<T, TE>()
            where T : unmanaged
            where TE : struct, IElement<T> => ComputeDispatch.Run(Y, new ConvertInto<T, TE>(X, Y), nameof(Y));
    }

    private readonly record struct ConvertInto<TIn, TInE>(DeviceTensor X, DeviceTensor Y) : IComputeLaunch
        where TIn : unmanaged
        where TInE : struct, IElement<TIn>
    {
        public void Run<T, TE>()
            where T : unmanaged
            where TE : struct, IElement<T>
        {
            Device device = X.Device;
            var kernel = device.Kernel(static a => a.LoadKernel<ArrayView<TIn>, ArrayView<T>, long>(ElementwiseKernels.Convert<TIn, TInE, T, TE>));
            kernel(device.Stream, device.GridStride, X.View<TIn>(), Y.View<T>(), X.ElementCount);
        }
    }
}
