using ILGPU;
using ILGPU.Runtime;
using QLoRA.Core;
using QLoRA.Runtime.Kernels;
using QLoRA.Runtime.Tensors;
using Device = QLoRA.Runtime.Devices.Device;

namespace QLoRA.Runtime.Ops;

/// <summary>Residual add and embedding lookup on float32 device tensors.</summary>
public static class Elementwise
{
    /// <summary>y = a + b (y may alias a or b).</summary>
    /// <exception cref="ArgumentException">Shapes or dtypes disagree.</exception>
    public static void Add(DeviceTensor a, DeviceTensor b, DeviceTensor y)
    {
        Shapes.Require(a, DType.F32, a.Shape, nameof(a));
        Shapes.Require(b, DType.F32, a.Shape, nameof(b));
        Shapes.Require(y, DType.F32, a.Shape, nameof(y));
        Device device = a.Device;
        var kernel = device.Kernel("elementwise.add", acc => acc.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, long>(ElementwiseKernels.Add));
        kernel(device.GridStride, a.View<float>(), b.View<float>(), y.View<float>(), a.ElementCount);
    }

    /// <summary>y[r, :] += bias for every row (a linear layer's bias).</summary>
    /// <exception cref="ArgumentException">Shapes or dtypes disagree.</exception>
    public static void AddBias(DeviceTensor y, DeviceTensor bias)
    {
        if (y.Shape.Count != 2)
        {
            throw new ArgumentException($"y must be [rows, dim], not [{string.Join(", ", y.Shape)}].", nameof(y));
        }

        Shapes.Require(y, DType.F32, y.Shape, nameof(y));
        Shapes.Require(bias, DType.F32, [y.Shape[1]], nameof(bias));
        Device device = y.Device;
        var kernel = device.Kernel("elementwise.addrow", a => a.LoadStreamKernel<ArrayView<float>, ArrayView<float>, long, int>(ElementwiseKernels.AddRowVector));
        kernel(device.GridStride, y.View<float>(), bias.View<float>(), y.Shape[0], checked((int)y.Shape[1]));
    }

    /// <summary>Embedding lookup: y[t] = table[ids[t]].</summary>
    /// <param name="table">F32 [vocab, dim].</param>
    /// <param name="ids">Token ids, each in [0, vocab).</param>
    /// <param name="y">F32 [ids.Length, dim].</param>
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

        Shapes.Require(table, DType.F32, table.Shape, nameof(table));
        Shapes.Require(y, DType.F32, [ids.Length, dim], nameof(y));
        Device device = table.Device;
        using DeviceTensor idTensor = DeviceTensor.FromHost(device, ids, DType.I32, ids.Length);
        var kernel = device.Kernel("elementwise.gather", a => a.LoadStreamKernel<ArrayView<float>, ArrayView<int>, ArrayView<float>, int, int>(ElementwiseKernels.Gather));
        kernel(device.GridStride, table.View<float>(), idTensor.View<int>(), y.View<float>(), ids.Length, dim);
        // Freed blocks are reused only by later work on the same (default) stream, so no synchronization is needed.
    }

    /// <summary>
    /// Embedding backward: dTable[ids[t]] += dy[t] for every token, deterministic (tokens grouped by id on the host,
    /// each row summed in token order; no atomics).
    /// </summary>
    /// <param name="dy">F32 [tokens, dim].</param>
    /// <param name="ids">Token ids.</param>
    /// <param name="dTable">F32 [vocab, dim], accumulated into.</param>
    /// <exception cref="ArgumentOutOfRangeException">An id is outside the vocabulary.</exception>
    public static void EmbeddingBackward(DeviceTensor dy, ReadOnlySpan<int> ids, DeviceTensor dTable)
    {
        long vocab = dTable.Shape[0];
        int dim = checked((int)dTable.Shape[1]);
        Shapes.Require(dy, DType.F32, [ids.Length, dim], nameof(dy));
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

        Device device = dy.Device;
        using DeviceTensor orderTensor = DeviceTensor.FromHost<int>(device, order, DType.I32, order.Length);
        using DeviceTensor startTensor = DeviceTensor.FromHost<int>(device, starts.ToArray(), DType.I32, starts.Count);
        using DeviceTensor idTensor = DeviceTensor.FromHost<int>(device, uniqueIds.ToArray(), DType.I32, uniqueIds.Count);
        var kernel = device.Kernel("elementwise.scatter", a => a.LoadStreamKernel<ArrayView<float>, ArrayView<int>, ArrayView<int>, ArrayView<int>, ArrayView<float>, int, int>(ElementwiseKernels.ScatterAddSorted));
        kernel(device.GridStride, dy.View<float>(), orderTensor.View<int>(), startTensor.View<int>(), idTensor.View<int>(), dTable.View<float>(), uniqueIds.Count, dim);
    }
}
