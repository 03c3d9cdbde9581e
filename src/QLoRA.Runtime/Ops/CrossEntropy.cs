using ILGPU;
using ILGPU.Runtime;
using QLoRA.Core;
using QLoRA.Runtime.Kernels;
using QLoRA.Runtime.Tensors;
using Device = QLoRA.Runtime.Devices.Device;

namespace QLoRA.Runtime.Ops;

/// <summary>
/// The language-model loss fused with the output projection and chunked over tokens: logits = h Wᵀ are formed for
/// <c>chunkTokens</c> rows at a time (never [tokens, vocab] at once), turned into their loss and gradient in place,
/// and pushed back into dh (and dW when given). Mean over the tokens whose label is not the ignore index.
/// Hidden states and lm_head share a compute dtype (F32, BF16, F16); logits, the softmax and the loss are float32,
/// the logit gradient is rounded to the compute dtype before it is multiplied back (as autocast does).
/// </summary>
public static class CrossEntropy
{
    /// <summary>Transformers' ignore index.</summary>
    public const int DefaultIgnoreIndex = -100;

    /// <summary>Computes the mean loss and, when asked, its gradients.</summary>
    /// <param name="hidden">[tokens, dim], the final hidden states (F32, BF16 or F16).</param>
    /// <param name="weight">[vocab, dim], lm_head, of the hidden states' dtype.</param>
    /// <param name="labels">Target id per token (already shifted), or the ignore index.</param>
    /// <param name="dHidden">[tokens, dim] of the hidden states' dtype receiving dLoss/dh, or null.</param>
    /// <param name="dWeight">F32 [vocab, dim] accumulating dLoss/dW, or null (lm_head frozen).</param>
    /// <param name="chunkTokens">Rows of logits alive at once.</param>
    /// <param name="ignoreIndex">Label that contributes nothing.</param>
    /// <returns>The mean loss (0 when every label is ignored).</returns>
    /// <exception cref="ArgumentOutOfRangeException">A label is outside the vocabulary (named with its position).</exception>
    public static double ForwardBackward(DeviceTensor hidden, DeviceTensor weight, ReadOnlySpan<int> labels, DeviceTensor? dHidden, DeviceTensor? dWeight, int chunkTokens = 1024, int ignoreIndex = DefaultIgnoreIndex)
    {
        int tokens = checked((int)hidden.Shape[0]), dim = checked((int)hidden.Shape[1]), vocab = checked((int)weight.Shape[0]);
        Shapes.Require(weight, hidden.Dtype, [vocab, dim], nameof(weight));
        if (labels.Length != tokens)
        {
            throw new ArgumentException($"{labels.Length} labels for {tokens} tokens.", nameof(labels));
        }

        int counted = 0;
        for (int t = 0; t < tokens; t++)
        {
            if (labels[t] != ignoreIndex && (uint)labels[t] >= (uint)vocab)
            {
                throw new ArgumentOutOfRangeException(nameof(labels), $"Label {t} is {labels[t]}, outside the vocabulary of {vocab} (and not the ignore index {ignoreIndex}).");
            }

            counted += labels[t] != ignoreIndex ? 1 : 0;
        }

        if (dHidden is not null)
        {
            Shapes.Require(dHidden, hidden.Dtype, hidden.Shape, nameof(dHidden));
        }

        if (dWeight is not null)
        {
            Shapes.Require(dWeight, DType.F32, weight.Shape, nameof(dWeight));
        }

        Device device = hidden.Device;
        float scale = counted == 0 ? 0f : 1f / counted;
        using DeviceTensor losses = DeviceTensor.Allocate(device, DType.F32, tokens);
        using DeviceTensor labelTensor = DeviceTensor.FromHost(device, labels, DType.I32, tokens);
        Accumulate(hidden, weight, labelTensor, losses, scale, dHidden, dWeight, chunkTokens, ignoreIndex);

        // Summed on the host in double, in token order: deterministic.
        return losses.ToHost<float>().Sum(l => (double)l) * scale;
    }

    /// <summary>
    /// The loss kept on the device: per-token losses into <paramref name="losses"/> (0 for ignored labels) and gradients
    /// scaled by <paramref name="scale"/> (1 / the target tokens of every micro-batch of an optimizer step), with no
    /// host synchronization — the engine reads its step's losses once. Labels must already be validated.
    /// </summary>
    internal static void Accumulate(DeviceTensor hidden, DeviceTensor weight, DeviceTensor labels, DeviceTensor losses, float scale, DeviceTensor? dHidden, DeviceTensor? dWeight, int chunkTokens = 1024, int ignoreIndex = DefaultIgnoreIndex)
    {
        int tokens = checked((int)hidden.Shape[0]), vocab = checked((int)weight.Shape[0]);
        Device device = hidden.Device;
        int chunk = Math.Max(1, Math.Min(chunkTokens, tokens));
        using DeviceTensor logits = DeviceTensor.Allocate(device, DType.F32, chunk, vocab);
        using DeviceTensor? rounded = hidden.Dtype == DType.F32 || (dHidden is null && dWeight is null) ? null : DeviceTensor.Allocate(device, hidden.Dtype, chunk, vocab);
        // The CPU accelerator's schedule needs no kernel: load (and compile) it only where it runs.
        var kernel = Cpu.CpuOps.Runs(hidden) ? null : device.Kernel(static a => a.LoadKernel<ArrayView<float>, ArrayView<int>, ArrayView<float>, int, int, int, float>(CrossEntropyKernels.LossAndGradient));
        for (int start = 0; start < tokens; start += chunk)
        {
            int rows = Math.Min(chunk, tokens - start);
            DeviceTensor h = hidden.Rows(start, rows);
            DeviceTensor z = logits.Rows(0, rows);
            Gemm.Multiply(h, weight, z, transposeB: true);
            if (kernel is null)
            {
                Cpu.CpuRowOps.CrossEntropyChunk(z, labels.Rows(start, rows), losses.Rows(start, rows), rows, vocab, ignoreIndex, scale);
            }
            else
            {
                kernel(device.Stream, device.GridStride, z.View<float>(), labels.Rows(start, rows).View<int>(), losses.Rows(start, rows).View<float>(), rows, vocab, ignoreIndex, scale);
            }

            DeviceTensor dz = z;
            if (rounded is not null)
            {
                dz = rounded.Rows(0, rows);
                Elementwise.Convert(z, dz);
            }

            if (dHidden is not null)
            {
                Gemm.Multiply(dz, weight, dHidden.Rows(start, rows));
            }

            if (dWeight is not null)
            {
                Gemm.Multiply(dz, h, dWeight, transposeA: true, beta: 1f);
            }
        }
    }
}
