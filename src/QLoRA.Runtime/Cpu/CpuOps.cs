using QLoRA.Core;
using QLoRA.Runtime.Devices;
using QLoRA.Runtime.Tensors;

namespace QLoRA.Runtime.Cpu;

/// <summary>The Ops entry points' CPU schedules: run in place on the CPU accelerator's host-memory buffers.</summary>
internal static unsafe class CpuOps
{
    /// <summary>True when <paramref name="tensor"/> lives on the CPU accelerator (its buffers are host memory) and its Ops
    /// take their CPU schedules.</summary>
    public static bool Runs(DeviceTensor tensor) => tensor.Device.Kind == DeviceKind.Cpu && tensor.Device.CpuSchedules;

    /// <summary>C = α·op(A)·op(B) + β·C (shapes already checked by the caller).</summary>
    public static void Gemm(DeviceTensor a, DeviceTensor b, DeviceTensor c, bool transposeA, bool transposeB, int m, int n, int k, float alpha, float beta)
    {
        // Kernels queued before this call write what it reads.
        a.Device.Stream.Synchronize();
        var left = new CpuMatrix((void*)a.NativePointer, CpuMatrix.ElementOf(a.Dtype), checked((int)a.Shape[1]), transposeA);
        var right = new CpuMatrix((void*)b.NativePointer, CpuMatrix.ElementOf(b.Dtype), checked((int)b.Shape[1]), transposeB);
        var output = new CpuOutput((void*)c.NativePointer, CpuMatrix.ElementOf(c.Dtype), n);
        if (!CpuGemm.TryMultiplySmallM(left, right, output, m, n, k, alpha, beta))
        {
            CpuGemm.Multiply(left, new DensePanelSource(right), output, m, n, k, alpha, beta);
        }
    }

    /// <summary>y[t] = table[ids[t]] (ids already checked): row copies, the dtype unchanged.</summary>
    public static void Gather(DeviceTensor table, ReadOnlySpan<int> ids, DeviceTensor y, int dim)
    {
        table.Device.Stream.Synchronize();
        long rowBytes = (long)dim * table.Dtype.SizeInBytes();
        byte* source = (byte*)table.NativePointer, destination = (byte*)y.NativePointer;
        for (int t = 0; t < ids.Length; t++)
        {
            Buffer.MemoryCopy(source + (ids[t] * rowBytes), destination + (t * rowBytes), rowBytes, rowBytes);
        }
    }

    /// <summary>
    /// dTable[id] += Σ dy[t] over the tokens of each id, in token order (tokens already grouped by id: order, segment
    /// starts, the segments' ids); one task per range of segments, so no row is written by two tasks.
    /// </summary>
    public static void ScatterAddSorted(DeviceTensor dy, int[] order, List<int> starts, List<int> ids, DeviceTensor dTable, int dim)
    {
        dy.Device.Stream.Synchronize();
        void* source = (void*)dy.NativePointer;
        float* table = (float*)dTable.NativePointer;
        CpuElement element = CpuMatrix.ElementOf(dy.Dtype);
        int[] segmentStarts = [.. starts], segmentIds = [.. ids];
        Parallel.For(0, segmentIds.Length, () => new float[2 * dim], (segment, _, scratch) =>
        {
            Span<float> sum = scratch.AsSpan(0, dim), row = scratch.AsSpan(dim, dim);
            sum.Clear();
            for (int k = segmentStarts[segment]; k < segmentStarts[segment + 1]; k++)
            {
                CpuElements.Load(source, element, (long)order[k] * dim, dim, row);
                System.Numerics.Tensors.TensorPrimitives.Add(sum, row, sum);
            }

            var target = new Span<float>(table + ((long)segmentIds[segment] * dim), dim);
            System.Numerics.Tensors.TensorPrimitives.Add(target, sum, target);
            return scratch;
        }, _ => { });
    }

    /// <summary>Attention forward (shapes already checked by the caller).</summary>
    public static void AttentionForward(DeviceTensor q, DeviceTensor k, DeviceTensor v, ReadOnlySpan<int> boundaries, DeviceTensor o, DeviceTensor lse, int slidingWindow)
    {
        q.Device.Stream.Synchronize();
        (int tokens, int heads, int kvHeads, int d) = Dimensions(q, k);
        CpuAttention.Forward(Operands(q, k, v, o, lse), boundaries, tokens, heads, kvHeads, d, 1f / MathF.Sqrt(d), slidingWindow);
    }

    /// <summary>Attention backward (shapes already checked by the caller); <paramref name="delta"/> is F32 [tokens, heads] scratch.</summary>
    public static void AttentionBackward(DeviceTensor q, DeviceTensor k, DeviceTensor v, ReadOnlySpan<int> boundaries, DeviceTensor o, DeviceTensor lse, DeviceTensor dO, DeviceTensor dQ, DeviceTensor dK, DeviceTensor dV, DeviceTensor delta, int slidingWindow)
    {
        q.Device.Stream.Synchronize();
        (int tokens, int heads, int kvHeads, int d) = Dimensions(q, k);
        CpuAttention.Backward(Operands(q, k, v, o, lse), (void*)dO.NativePointer, (void*)dQ.NativePointer, (void*)dK.NativePointer, (void*)dV.NativePointer, (float*)delta.NativePointer, boundaries, tokens, heads, kvHeads, d, 1f / MathF.Sqrt(d), slidingWindow);
    }

    private static (int Tokens, int Heads, int KvHeads, int D) Dimensions(DeviceTensor q, DeviceTensor k) =>
        (checked((int)q.Shape[0]), checked((int)q.Shape[1]), checked((int)k.Shape[1]), checked((int)q.Shape[2]));

    private static CpuAttentionOperands Operands(DeviceTensor q, DeviceTensor k, DeviceTensor v, DeviceTensor o, DeviceTensor lse) =>
        new((void*)q.NativePointer, (void*)k.NativePointer, (void*)v.NativePointer, (void*)o.NativePointer, (float*)lse.NativePointer, CpuMatrix.ElementOf(q.Dtype));
}
