using System.Buffers;
using System.Numerics.Tensors;
using QLoRA.Core;
using QLoRA.Runtime.Kernels;
using QLoRA.Runtime.Ops;
using QLoRA.Runtime.Tensors;

namespace QLoRA.Runtime.Cpu;

/// <summary>
/// CPU schedule of paged attention: one task per (row, head) reads its visible keys page by page, takes an exact
/// softmax of the scores (one max, no rescaling) and the weighted sum of values, SIMD over the head dimension. Sums in a
/// fixed order: a row's result repeats bit for bit and does not depend on the other rows.
/// </summary>
internal static unsafe class CpuPagedAttention
{
    public static void Write(DeviceTensor k, DeviceTensor v, DeviceTensor keys, DeviceTensor values, PagedRows rows, PagedAttentionShape s)
    {
        k.Device.Stream.Synchronize();
        int* table = (int*)rows.BlockTables.NativePointer, sequence = (int*)rows.RowSequence.NativePointer, position = (int*)rows.RowPosition.NativePointer;
        long rowBytes = (long)s.KvHeads * s.HeadDim * k.Dtype.SizeInBytes();
        for (int r = 0; r < s.Rows; r++)
        {
            long target = Slot(table, sequence[r], position[r], s) * rowBytes;
            Buffer.MemoryCopy((byte*)k.NativePointer + (r * rowBytes), (byte*)keys.NativePointer + target, rowBytes, rowBytes);
            Buffer.MemoryCopy((byte*)v.NativePointer + (r * rowBytes), (byte*)values.NativePointer + target, rowBytes, rowBytes);
        }
    }

    public static void Attend(DeviceTensor q, DeviceTensor keys, DeviceTensor values, PagedRows rows, DeviceTensor o, PagedAttentionShape s)
    {
        q.Device.Stream.Synchronize();
        CpuElement element = CpuMatrix.ElementOf(q.Dtype);
        void* qp = (void*)q.NativePointer, kp = (void*)keys.NativePointer, vp = (void*)values.NativePointer, op = (void*)o.NativePointer;
        int* table = (int*)rows.BlockTables.NativePointer, sequence = (int*)rows.RowSequence.NativePointer, position = (int*)rows.RowPosition.NativePointer;
        int d = s.HeadDim, group = s.Heads / s.KvHeads;
        Parallel.For(0, s.Rows * s.Heads, item =>
        {
            int row = item / s.Heads, h = item % s.Heads, kvh = h / group, pos = position[row];
            int first = s.Window > 0 ? Math.Max(0, pos - s.Window + 1) : 0, count = pos - first + 1;
            float[] rented = ArrayPool<float>.Shared.Rent((3 * d) + count);
            try
            {
                Span<float> query = rented.AsSpan(0, d), key = rented.AsSpan(d, d), output = rented.AsSpan(2 * d, d), scores = rented.AsSpan(3 * d, count);
                CpuElements.Load(qp, element, (((long)row * s.Heads) + h) * d, d, query);
                for (int j = first; j <= pos; j++)
                {
                    CpuElements.Load(kp, element, ((Slot(table, sequence[row], j, s) * s.KvHeads) + kvh) * d, d, key);
                    scores[j - first] = TensorPrimitives.Dot(query, key) * s.Scale;
                }

                float max = TensorPrimitives.Max(scores);
                TensorPrimitives.Subtract(scores, max, scores);
                TensorPrimitives.Exp(scores, scores);
                float sum = TensorPrimitives.Sum(scores);
                output.Clear();
                for (int j = first; j <= pos; j++)
                {
                    CpuElements.Load(vp, element, ((Slot(table, sequence[row], j, s) * s.KvHeads) + kvh) * d, d, key);
                    TensorPrimitives.MultiplyAdd(key, scores[j - first], output, output);
                }

                TensorPrimitives.Divide(output, sum, output);
                CpuElements.Store(output, op, element, (((long)row * s.Heads) + h) * d);
            }
            finally
            {
                ArrayPool<float>.Shared.Return(rented);
            }
        });
    }

    // The pool row of (sequence, position).
    private static long Slot(int* table, int sequence, int position, PagedAttentionShape s) =>
        ((long)table[((long)sequence * s.MaxPages) + (position / s.PageTokens)] * s.PageTokens) + (position % s.PageTokens);
}
