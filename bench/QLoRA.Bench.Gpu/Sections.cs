using ILGPU;
using ILGPU.Runtime;
using QLoRA.Core;
using QLoRA.Core.Quantization;
using QLoRA.Runtime.Native;
using QLoRA.Runtime.Ops;
using QLoRA.Runtime.Tensors;

namespace QLoRA.Bench.Gpu;

/// <summary>
/// The benchmark's sections at llama-8b shapes (DESIGN.md §5): the copy reference, 4-bit dequantize and GEMV, GEMMs
/// (cuBLAS, our tensor-core and portable kernels, the fused 4-bit GEMM against dequantize-then-cuBLAS), attention
/// forward/backward at sequence 2048 and the fused cross-entropy at vocabulary 128256.
/// </summary>
internal static class Sections
{
    public static void Copy(BenchReport r)
    {
        long bytes = r.Small ? 64L << 20 : 1L << 30;
        using MemoryBuffer1D<byte, Stride1D.Dense> src = r.Device.Accelerator.Allocate1D<byte>(bytes);
        using MemoryBuffer1D<byte, Stride1D.Dense> dst = r.Device.Accelerator.Allocate1D<byte>(bytes);
        src.MemSetToZero();
        double t = r.Time(() => dst.View.CopyFrom(src.View), r.Small ? 3 : 20);
        r.CopyBandwidth = 2.0 * bytes / t;
        r.AddBandwidth("copy", "device copy (read + write)", $"{bytes >> 20} MiB", t, 2.0 * bytes);
    }

    public static void FourBit(BenchReport r)
    {
        foreach ((int outF, int inF) in r.Small ? new[] { (512, 1024) } : new[] { (14336, 4096), (4096, 14336), (4096, 4096), (128256, 4096) })
        {
            var rng = new Random(1);
            float[] w = new float[(long)outF * inF];
            for (long i = 0; i < w.Length; i++)
            {
                w[i] = (float)((rng.NextDouble() - 0.5) * 0.05);
            }

            QuantizedTensor q = QuantizedTensor.Quantize(w, [outF, inF]);
            using DeviceQuantizedTensor dq = DeviceQuantizedTensor.Upload(r.Device, q);
            long n = (long)outF * inF, stored = q.State.PackedBytes + q.State.Absmax.StorageBytes;
            using (DeviceTensor bf16 = DeviceTensor.Allocate(r.Device, DType.BF16, outF, inF))
            {
                double t = r.Time(() => dq.DequantizeToBf16(bf16.View<ushort>()), r.Small ? 3 : 20);
                r.AddBandwidth($"dequant_{outF}x{inF}", "NF4+DQ dequantize → bf16", $"{outF}×{inF}", t, stored + (2.0 * n));
            }

            using DeviceTensor x = RandomTensors.Create(r.Device, DType.BF16, 1, 2, 1, inF);
            using DeviceTensor y = DeviceTensor.Allocate(r.Device, DType.BF16, 1, outF);
            double g = r.Time(() => dq.Gemv(x, y), r.Small ? 3 : 50);
            r.AddBandwidth($"gemv_{outF}x{inF}", "NF4+DQ GEMV, batch 1, bf16", $"{outF}×{inF}", g, stored + (2.0 * inF) + (2.0 * outF));
        }
    }

    public static void Gemms(BenchReport r)
    {
        int tokens = r.Small ? 128 : 4096;
        Cublas? cublas = r.Device.Blas;
        r.Summary["cublas"] = cublas?.Library ?? "absent";
        foreach ((string name, int outF, int inF) in r.Small ? new[] { ("proj", 256, 192) } : new[] { ("q_proj", 4096, 4096), ("gate_proj", 14336, 4096), ("down_proj", 4096, 14336) })
        {
            string shape = $"{tokens}×{outF}×{inF}";
            double flops = 2.0 * tokens * outF * inF;
            int iterations = r.Small ? 2 : 5;
            using DeviceTensor x = RandomTensors.Create(r.Device, DType.BF16, 1, 3, tokens, inF);
            using DeviceTensor w = RandomTensors.Create(r.Device, DType.BF16, 0.05, 4, outF, inF);
            using DeviceTensor y = DeviceTensor.Allocate(r.Device, DType.BF16, tokens, outF);
            if (cublas is not null)
            {
                double tc = r.Time(() => Gemm.Multiply(x, w, y, transposeB: true, path: GemmPath.Cublas), iterations);
                r.CublasFlops ??= flops / tc; // the reference for every compute-bound row: the first (q_proj) shape
                r.AddCompute($"gemm_cublas_{name}", "GEMM bf16 cuBLAS, x·Wᵀ", shape, tc, flops);
            }

            r.TryAddCompute($"gemm_mma_{name}", "GEMM bf16 ILGPU mma.sync, x·Wᵀ", shape, () => r.Time(() => Gemm.Multiply(x, w, y, transposeB: true, path: GemmPath.TensorCore), iterations), flops);
            r.AddCompute($"gemm_portable_{name}", "GEMM bf16 ILGPU portable, x·Wᵀ", shape, r.Time(() => Gemm.Multiply(x, w, y, transposeB: true, path: GemmPath.Portable), 2), flops);

            // The 4-bit base weight: fused decode-in-GEMM against dequantize-to-bf16 then cuBLAS.
            var q = QuantizedTensor.Quantize(w.ToSingle(), [outF, inF]);
            using DeviceQuantizedTensor packed = DeviceQuantizedTensor.Upload(r.Device, q);
            r.TryAddCompute($"gemm_nf4_fused_mma_{name}", "NF4 GEMM fused, decoded into mma.sync fragments", shape, () => r.Time(() => packed.Multiply(x, y, path: GemmPath.TensorCore), iterations), flops);
            r.AddCompute($"gemm_nf4_fused_portable_{name}", "NF4 GEMM fused, portable", shape, r.Time(() => packed.Multiply(x, y, path: GemmPath.Portable), 2), flops);
            if (cublas is not null)
            {
                using DeviceTensor dense = DeviceTensor.Allocate(r.Device, DType.BF16, outF, inF);
                double t = r.Time(
                    () =>
                    {
                        packed.DequantizeToBf16(dense.View<ushort>());
                        Gemm.Multiply(x, dense, y, transposeB: true, path: GemmPath.Cublas);
                    },
                    iterations);
                r.AddCompute($"gemm_nf4_dequant_cublas_{name}", "NF4 dequantize + cuBLAS", shape, t, flops);
            }
        }
    }

    public static void Attention(BenchReport r)
    {
        int tokens = r.Small ? 128 : 2048, heads = r.Small ? 4 : 32, kvHeads = r.Small ? 2 : 8, d = r.Small ? 32 : 128;
        using DeviceTensor q = RandomTensors.Create(r.Device, DType.BF16, 1, 5, tokens, heads, d);
        using DeviceTensor k = RandomTensors.Create(r.Device, DType.BF16, 1, 6, tokens, kvHeads, d);
        using DeviceTensor v = RandomTensors.Create(r.Device, DType.BF16, 1, 7, tokens, kvHeads, d);
        using DeviceTensor dO = RandomTensors.Create(r.Device, DType.BF16, 1, 8, tokens, heads, d);
        using DeviceTensor o = DeviceTensor.Allocate(r.Device, DType.BF16, tokens, heads, d), lse = DeviceTensor.Allocate(r.Device, DType.F32, tokens, heads);
        using DeviceTensor dq = DeviceTensor.Allocate(r.Device, DType.BF16, tokens, heads, d);
        using DeviceTensor dk = DeviceTensor.Allocate(r.Device, DType.BF16, tokens, kvHeads, d), dv = DeviceTensor.Allocate(r.Device, DType.BF16, tokens, kvHeads, d);
        int[] boundaries = [0, tokens];
        string shape = $"seq {tokens}, {heads}/{kvHeads} heads, d {d}";
        double causalFlops = 2.0 * tokens * tokens * heads * d; // QKᵀ and PV over the causal half: 2 · 2 · T²/2 · H · d
        r.AddCompute("attention_forward", "attention forward, causal GQA, bf16", shape, r.Time(() => QLoRA.Runtime.Ops.Attention.Forward(q, k, v, boundaries, o, lse), 3), causalFlops);
        r.AddCompute("attention_backward", "attention backward, causal GQA, bf16", shape, r.Time(() => QLoRA.Runtime.Ops.Attention.Backward(q, k, v, boundaries, o, lse, dO, dq, dk, dv), 3), 2.5 * causalFlops);
    }

    public static void CrossEntropyLoss(BenchReport r)
    {
        int tokens = r.Small ? 64 : 2048, vocab = r.Small ? 1000 : 128256, hidden = r.Small ? 64 : 4096;
        using DeviceTensor h = RandomTensors.Create(r.Device, DType.BF16, 1, 9, tokens, hidden);
        using DeviceTensor w = RandomTensors.Create(r.Device, DType.BF16, 0.02, 10, vocab, hidden);
        using DeviceTensor dh = DeviceTensor.Allocate(r.Device, DType.BF16, tokens, hidden);
        var rng = new Random(11);
        int[] labels = [.. Enumerable.Range(0, tokens).Select(_ => rng.Next(vocab))];
        double t = r.Time(() => CrossEntropy.ForwardBackward(h, w, labels, dh, null, chunkTokens: r.Small ? 16 : 1024), 3);
        r.AddCompute("cross_entropy", "fused lm_head + cross-entropy fwd+bwd (dh), bf16", $"{tokens} tokens × vocab {vocab} × {hidden}", t, 4.0 * tokens * vocab * hidden);
    }
    // The optimizer step over an llama-8b r16 all-linear adapter's flat buffers (41.9 M parameters): AdamW with its
    // state on the device next to paged AdamW (state in pinned host memory, pages copied both ways on their own
    // streams, overlapped with the updates) and paged 8-bit AdamW. The paged rows' rate is host↔device traffic.
    public static void Optimizers(BenchReport r)
    {
        long n = r.Small ? 1L << 20 : 41_943_040;
        using DeviceTensor values = RandomTensors.Create(r.Device, DType.F32, 0.02, 12, n);
        using DeviceTensor gradients = RandomTensors.Create(r.Device, DType.F32, 1e-3, 13, n);
        var options = new QLoRA.Runtime.Ops.AdamWOptions();
        int step = 0;
        double Time(QLoRA.Runtime.Training.AdapterOptimizer optimizer) => r.Time(() => optimizer.Step(values, gradients, ++step, 1e-4, 1f), r.Small ? 2 : 10);
        using var plain = new QLoRA.Runtime.Training.AdamWOptimizer(r.Device, n, options);
        double tPlain = Time(plain);
        r.AddBandwidth("adamw", "AdamW step, state on the device", $"{n / 1e6:F1} M params", tPlain, 24.0 * n);
        using var paged = new QLoRA.Runtime.Training.PagedAdamWOptimizer(r.Device, n, options);
        double tPaged = Time(paged);
        r.Add("paged AdamW step (copies overlapped)", $"{n / 1e6:F1} M params, page {paged.PageElements >> 20} Mi", tPaged, $"{16.0 * n / tPaged / 1e9:F1} GB/s host↔device", $"{tPaged / tPlain:F2}× AdamW's time");
        r.Summary["paged_adamw_step_s"] = tPaged;
        r.Summary["paged_adamw_over_adamw"] = tPaged / tPlain;
        using var paged8 = new QLoRA.Runtime.Training.EightBitAdamWOptimizer(r.Device, n, options, QLoRA.Runtime.Training.PagedAdamWOptimizer.DefaultPageElements);
        double tPaged8 = Time(paged8);
        r.Add("paged 8-bit AdamW step", $"{n / 1e6:F1} M params", tPaged8, $"{4.0 * n / tPaged8 / 1e9:F1} GB/s host↔device", $"{tPaged8 / tPlain:F2}× AdamW's time");
        r.Summary["paged_adamw8bit_step_s"] = tPaged8;
    }
}
