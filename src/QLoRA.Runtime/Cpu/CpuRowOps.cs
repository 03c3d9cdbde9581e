using System.Buffers;
using System.Numerics.Tensors;
using QLoRA.Runtime.Kernels;
using QLoRA.Runtime.Tensors;

namespace QLoRA.Runtime.Cpu;

/// <summary>
/// CPU schedules of the row and elementwise ops (RMSNorm, RoPE, SwiGLU, add): each task owns whole rows, or a range of
/// elements, and works on the accelerator's host buffers in place — no kernel launch, no emulated warps. The per-element
/// arithmetic is the kernels' own, in float32 with one rounding on store; reductions (RMSNorm's sum of squares, its
/// weight gradient) run in a fixed order, so results repeat bit for bit.
/// </summary>
internal static unsafe class CpuRowOps
{
    // Elements per task for elementwise ops: enough that scheduling is noise.
    private const int ElementsPerTask = 1 << 15;

    /// <summary>y = w ⊙ x / sqrt(mean(x²) + ε) per row; 1/rms saved per row.</summary>
    public static void RmsNormForward(DeviceTensor x, DeviceTensor weight, DeviceTensor y, DeviceTensor inverseRms, int rows, int dim, float eps)
    {
        x.Device.Stream.Synchronize();
        void* xs = (void*)x.NativePointer, ys = (void*)y.NativePointer;
        float* w = (float*)weight.NativePointer, inv = (float*)inverseRms.NativePointer;
        CpuElement element = CpuMatrix.ElementOf(x.Dtype);
        ForRows(rows, dim, (first, end, row) =>
        {
            for (int r = first; r < end; r++)
            {
                CpuElements.Load(xs, element, (long)r * dim, dim, row);
                float sum = TensorPrimitives.SumOfSquares(row);
                float scale = 1f / MathF.Sqrt((sum / dim) + eps);
                inv[r] = scale;
                TensorPrimitives.Multiply(row, scale, row);
                TensorPrimitives.Multiply(row, new ReadOnlySpan<float>(w, dim), row);

                CpuElements.Store(row, ys, element, (long)r * dim);
            }
        });
    }

    /// <summary>dx = inv·(w⊙dy) − x·inv³·mean(w⊙dy⊙x) per row; dw[j] = Σ_r dy·x·inv over rows in order.</summary>
    public static void RmsNormBackward(DeviceTensor x, DeviceTensor weight, DeviceTensor dy, DeviceTensor inverseRms, DeviceTensor dx, DeviceTensor? dWeight, int rows, int dim, bool accumulate = false)
    {
        x.Device.Stream.Synchronize();
        void* xs = (void*)x.NativePointer, dys = (void*)dy.NativePointer, dxs = (void*)dx.NativePointer;
        float* w = (float*)weight.NativePointer, inv = (float*)inverseRms.NativePointer, dw = dWeight is null ? null : (float*)dWeight.NativePointer;
        CpuElement element = CpuMatrix.ElementOf(x.Dtype);

        // The weight gradient first: dx may alias dy. Each column's sum runs over rows in order (as the GPU kernel's),
        // then is stored or added.
        int columnTasks = Math.Max(1, Math.Min(Environment.ProcessorCount * 4, dim / 64));
        Parallel.For(0, dw is null ? 0 : columnTasks, task =>
        {
            int j0 = (int)((long)dim * task / columnTasks), j1 = (int)((long)dim * (task + 1) / columnTasks);
            float[] a = ArrayPool<float>.Shared.Rent(dim), b = ArrayPool<float>.Shared.Rent(dim), sums = ArrayPool<float>.Shared.Rent(dim);
            try
            {
                Span<float> sum = sums.AsSpan(0, j1 - j0);
                sum.Clear();
                for (int r = 0; r < rows; r++)
                {
                    CpuElements.Load(dys, element, ((long)r * dim) + j0, j1 - j0, a);
                    CpuElements.Load(xs, element, ((long)r * dim) + j0, j1 - j0, b);
                    for (int j = 0; j < j1 - j0; j++)
                    {
                        sum[j] += a[j] * b[j] * inv[r];
                    }
                }

                for (int j = 0; j < j1 - j0; j++)
                {
                    dw[j0 + j] = accumulate ? dw[j0 + j] + sum[j] : sum[j];
                }
            }
            finally
            {
                ArrayPool<float>.Shared.Return(a);
                ArrayPool<float>.Shared.Return(b);
                ArrayPool<float>.Shared.Return(sums);
            }
        });

        ForRows(rows, 2 * dim, (first, end, scratch) =>
        {
            Span<float> xr = scratch[..dim], dyr = scratch.Slice(dim, dim);
            for (int r = first; r < end; r++)
            {
                CpuElements.Load(xs, element, (long)r * dim, dim, xr);
                CpuElements.Load(dys, element, (long)r * dim, dim, dyr);
                float scale = inv[r];
                var weights = new ReadOnlySpan<float>(w, dim);
                TensorPrimitives.Multiply(dyr, weights, dyr);                    // w⊙dy
                float k = TensorPrimitives.Dot(dyr, xr) / dim * scale * scale * scale;
                TensorPrimitives.Multiply(dyr, scale, dyr);
                TensorPrimitives.MultiplyAdd(xr, -k, dyr, dyr);                   // inv·(w⊙dy) − x·k

                CpuElements.Store(dyr, dxs, element, (long)r * dim);
            }
        });
    }

    /// <summary>Rotate-half RoPE in place over [tokens, heads, headDim]; direction +1 forward, −1 backward.</summary>
    public static void Rope(DeviceTensor x, DeviceTensor positions, DeviceTensor invFreq, int tokens, int heads, int headDim, float direction)
    {
        x.Device.Stream.Synchronize();
        void* xs = (void*)x.NativePointer;
        int* pos = (int*)positions.NativePointer;
        float* freq = (float*)invFreq.NativePointer;
        CpuElement element = CpuMatrix.ElementOf(x.Dtype);
        int half = headDim / 2;
        ForRows(tokens, 2 * half + (heads * headDim), (first, end, scratch) =>
        {
            Span<float> cos = scratch[..half], sin = scratch.Slice(half, half), row = scratch.Slice(2 * half, heads * headDim);
            for (int t = first; t < end; t++)
            {
                for (int i = 0; i < half; i++)
                {
                    float angle = pos[t] * freq[i];
                    cos[i] = MathF.Cos(angle);
                    sin[i] = MathF.Sin(angle) * direction;
                }

                CpuElements.Load(xs, element, (long)t * heads * headDim, heads * headDim, row);
                for (int h = 0; h < heads; h++)
                {
                    Span<float> head = row.Slice(h * headDim, headDim);
                    for (int i = 0; i < half; i++)
                    {
                        float a = head[i], b = head[i + half];
                        head[i] = (a * cos[i]) - (b * sin[i]);
                        head[i + half] = (b * cos[i]) + (a * sin[i]);
                    }
                }

                CpuElements.Store(row, xs, element, (long)t * heads * headDim);
            }
        });
    }

    /// <summary>y = silu(g) ⊙ u.</summary>
    public static void SwiGluForward(DeviceTensor gate, DeviceTensor up, DeviceTensor y)
    {
        gate.Device.Stream.Synchronize();
        void* gs = (void*)gate.NativePointer, us = (void*)up.NativePointer, ys = (void*)y.NativePointer;
        CpuElement element = CpuMatrix.ElementOf(gate.Dtype);
        ForElements(gate.ElementCount, 2, (start, count, scratch) =>
        {
            Span<float> g = scratch[..count], u = scratch.Slice(count, count);
            CpuElements.Load(gs, element, start, count, g);
            CpuElements.Load(us, element, start, count, u);
            TensorPrimitives.Multiply(u, g, u);
            TensorPrimitives.Sigmoid(g, g);
            TensorPrimitives.Multiply(u, g, u); // silu(g)·u = g·σ(g)·u
            CpuElements.Store(u, ys, element, start);
        });
    }

    /// <summary>dg = dy·u·σ(g)·(1 + g·(1 − σ(g))), du = dy·silu(g) (dUp may alias up).</summary>
    public static void SwiGluBackward(DeviceTensor gate, DeviceTensor up, DeviceTensor dy, DeviceTensor dGate, DeviceTensor dUp)
    {
        gate.Device.Stream.Synchronize();
        void* gs = (void*)gate.NativePointer, us = (void*)up.NativePointer, dys = (void*)dy.NativePointer, dgs = (void*)dGate.NativePointer, dus = (void*)dUp.NativePointer;
        CpuElement element = CpuMatrix.ElementOf(gate.Dtype);
        ForElements(gate.ElementCount, 3, (start, count, scratch) =>
        {
            Span<float> g = scratch[..count], u = scratch.Slice(count, count), d = scratch.Slice(2 * count, count);
            CpuElements.Load(gs, element, start, count, g);
            CpuElements.Load(us, element, start, count, u);
            CpuElements.Load(dys, element, start, count, d);
            for (int i = 0; i < count; i++)
            {
                float sigmoid = 1f / (1f + MathF.Exp(-g[i]));
                float du = d[i] * g[i] * sigmoid;
                g[i] = d[i] * u[i] * sigmoid * (1f + (g[i] * (1f - sigmoid)));
                u[i] = du;
            }

            CpuElements.Store(u, dus, element, start);
            CpuElements.Store(g, dgs, element, start);
        });
    }

    /// <summary>y = a + b (y may alias a or b).</summary>
    public static void Add(DeviceTensor a, DeviceTensor b, DeviceTensor y)
    {
        a.Device.Stream.Synchronize();
        void* xs = (void*)a.NativePointer, bs = (void*)b.NativePointer, ys = (void*)y.NativePointer;
        CpuElement element = CpuMatrix.ElementOf(a.Dtype);
        ForElements(a.ElementCount, 2, (start, count, scratch) =>
        {
            Span<float> left = scratch[..count], right = scratch.Slice(count, count);
            CpuElements.Load(xs, element, start, count, left);
            CpuElements.Load(bs, element, start, count, right);
            TensorPrimitives.Add(left, right, left);
            CpuElements.Store(left, ys, element, start);
        });
    }

    /// <summary>
    /// Softmax cross-entropy on a chunk of float32 logit rows in place (the fused LM loss's inner step): each row's loss
    /// (log-sum-exp − logit[label]) and the row replaced by (softmax − one-hot)·gradScale; ignored rows give 0.
    /// </summary>
    public static void CrossEntropyChunk(DeviceTensor logits, DeviceTensor labels, DeviceTensor losses, int rows, int vocab, int ignoreIndex, float gradScale)
    {
        logits.Device.Stream.Synchronize();
        float* z = (float*)logits.NativePointer, loss = (float*)losses.NativePointer;
        int* label = (int*)labels.NativePointer;
        ForRows(rows, 0, (first, end, _) =>
        {
            for (int r = first; r < end; r++)
            {
                var row = new Span<float>(z + ((long)r * vocab), vocab);
                if (label[r] == ignoreIndex)
                {
                    loss[r] = 0f;
                    row.Clear();
                    continue;
                }

                float max = TensorPrimitives.Max(row);
                float sum = 0f;
                foreach (float v in row)
                {
                    sum += MathF.Exp(v - max);
                }

                float logSumExp = max + MathF.Log(sum);
                loss[r] = logSumExp - row[label[r]];
                for (int j = 0; j < vocab; j++)
                {
                    row[j] = (MathF.Exp(row[j] - logSumExp) - (j == label[r] ? 1f : 0f)) * gradScale;
                }
            }
        });
    }

    /// <summary>Inverted dropout with the kernels' counter-based mask (the same hash of (seed, index)): y may alias x.</summary>
    public static void Dropout(DeviceTensor x, DeviceTensor y, uint threshold, float scale, uint seed)
    {
        x.Device.Stream.Synchronize();
        void* xs = (void*)x.NativePointer, ys = (void*)y.NativePointer;
        CpuElement element = CpuMatrix.ElementOf(x.Dtype);
        ForElements(x.ElementCount, 1, (start, count, scratch) =>
        {
            CpuElements.Load(xs, element, start, count, scratch);
            for (int i = 0; i < count; i++)
            {
                scratch[i] = DropoutKernels.Hash(seed, start + i) >= threshold ? scratch[i] * scale : 0f;
            }

            CpuElements.Store(scratch, ys, element, start);
        });
    }

    /// <summary>One AdamW step in place, the kernel's arithmetic element by element (float32 state).</summary>
    public static void AdamW(DeviceTensor parameter, DeviceTensor gradient, DeviceTensor m, DeviceTensor v, AdamWHyper h)
    {
        parameter.Device.Stream.Synchronize();
        float* ps = (float*)parameter.NativePointer, gs = (float*)gradient.NativePointer, ms = (float*)m.NativePointer, vs = (float*)v.NativePointer;
        ForElements(parameter.ElementCount, 0, (start, count, _) =>
        {
            for (long i = start; i < start + count; i++)
            {
                float g = gs[i] * h.GradientScale;
                float p = ps[i] * h.Decay;
                float mi = (h.Beta1 * ms[i]) + (h.OneMinusBeta1 * g);
                float vi = (h.Beta2 * vs[i]) + (h.OneMinusBeta2 * g * g);
                ms[i] = mi;
                vs[i] = vi;
                float mHat = mi / h.BiasCorrection1;
                float denominator = (MathF.Sqrt(vi) / h.BiasCorrection2Sqrt) + h.Epsilon;
                ps[i] = p - (h.LearningRate * mHat / denominator);
            }
        });
    }

    /// <summary>The kernel's partition (lane p sums elements p, p + lanes, … in order; lanes a multiple of 16), lanes split across cores.</summary>
    public static void SumOfSquaresPartials(DeviceTensor x, DeviceTensor partials, int lanes)
    {
        x.Device.Stream.Synchronize();
        float* xs = (float*)x.NativePointer, ps = (float*)partials.NativePointer;
        long count = x.ElementCount;
        // Sixteen neighbouring lanes at a time share each cache line read; every lane still sums in index order.
        const int Width = 16;
        ForRows(lanes / Width, Width, (first, end, sums) =>
        {
            for (int blockIndex = first; blockIndex < end; blockIndex++)
            {
                int lane0 = blockIndex * Width;
                sums.Clear();
                for (long row = lane0; row < count; row += lanes)
                {
                    int n = (int)Math.Min(Width, count - row);
                    for (int j = 0; j < n; j++)
                    {
                        sums[j] += xs[row + j] * xs[row + j];
                    }
                }

                sums.CopyTo(new Span<float>(ps + lane0, Width));
            }
        });
    }

    private delegate void RowsBody(int first, int end, Span<float> scratch);

    private delegate void ElementsBody(long start, int count, Span<float> scratch);

    // Rows in contiguous ranges, a few per core; each task gets float32 scratch of scratchFloats.
    private static void ForRows(int rows, int scratchFloats, RowsBody body)
    {
        int tasks = Math.Max(1, Math.Min(rows, Environment.ProcessorCount * 4));
        Parallel.For(0, tasks, task =>
        {
            int first = (int)((long)rows * task / tasks), end = (int)((long)rows * (task + 1) / tasks);
            float[] scratch = ArrayPool<float>.Shared.Rent(Math.Max(1, scratchFloats));
            try
            {
                body(first, end, scratch.AsSpan(0, scratchFloats));
            }
            finally
            {
                ArrayPool<float>.Shared.Return(scratch);
            }
        });
    }

    private static void ForElements(long count, int operands, ElementsBody body)
    {
        long tasks = (count + ElementsPerTask - 1) / ElementsPerTask;
        Parallel.For(0L, tasks, task =>
        {
            long start = task * ElementsPerTask;
            int length = (int)Math.Min(ElementsPerTask, count - start);
            float[] scratch = ArrayPool<float>.Shared.Rent(operands * ElementsPerTask);
            try
            {
                body(start, length, scratch.AsSpan(0, operands * length));
            }
            finally
            {
                ArrayPool<float>.Shared.Return(scratch);
            }
        });
    }
}
