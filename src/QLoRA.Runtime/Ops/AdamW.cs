using ILGPU;
using ILGPU.Runtime;
using QLoRA.Core;
using QLoRA.Runtime.Kernels;
using QLoRA.Runtime.Tensors;
using Device = QLoRA.Runtime.Devices.Device;

namespace QLoRA.Runtime.Ops;

/// <summary>AdamW hyperparameters (QLoRA's defaults: lr 2e-4, β 0.9/0.999, ε 1e-8, weight decay 0).</summary>
public sealed record AdamWOptions(double LearningRate = 2e-4, double Beta1 = 0.9, double Beta2 = 0.999, double Epsilon = 1e-8, double WeightDecay = 0.0);

/// <summary>One AdamW update of a float32 parameter with float32 moments.</summary>
public static class AdamW
{
    /// <summary>Applies step <paramref name="step"/> (1-based) to <paramref name="parameter"/> in place.</summary>
    /// <param name="parameter">Parameter, updated.</param>
    /// <param name="gradient">Its gradient (same shape).</param>
    /// <param name="m">First moment, updated.</param>
    /// <param name="v">Second moment, updated.</param>
    /// <param name="step">1-based step number, for bias correction.</param>
    /// <param name="options">Hyperparameters.</param>
    /// <param name="gradientScale">Multiplies the gradient first (e.g. gradient clipping or loss-scale undo).</param>
    /// <exception cref="ArgumentException">Shapes or dtypes disagree.</exception>
    public static void Step(DeviceTensor parameter, DeviceTensor gradient, DeviceTensor m, DeviceTensor v, int step, AdamWOptions options, float gradientScale = 1f)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(step, 1);
        foreach ((DeviceTensor t, string name) in new[] { (parameter, nameof(parameter)), (gradient, nameof(gradient)), (m, nameof(m)), (v, nameof(v)) })
        {
            Shapes.Require(t, DType.F32, parameter.Shape, name);
        }

        var hyper = new AdamWHyper(
            (float)options.LearningRate, (float)options.Beta1, (float)options.Beta2, (float)(1 - options.Beta1), (float)(1 - options.Beta2), (float)options.Epsilon,
            (float)(1 - (options.LearningRate * options.WeightDecay)), (float)(1 - Math.Pow(options.Beta1, step)), (float)Math.Sqrt(1 - Math.Pow(options.Beta2, step)), gradientScale);
        if (Cpu.CpuOps.Runs(parameter))
        {
            Cpu.CpuRowOps.AdamW(parameter, gradient, m, v, hyper);
            return;
        }

        Device device = parameter.Device;
        var kernel = device.Kernel(static a => a.LoadKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, long, AdamWHyper>(AdamWKernels.Step));
        kernel(device.Stream, device.GridStride, parameter.View<float>(), gradient.View<float>(), m.View<float>(), v.View<float>(), parameter.ElementCount, hyper);
    }
}
