using ILGPU;
using ILGPU.Runtime;
using QLoRA.Core;
using QLoRA.Runtime.Engine;
using QLoRA.Runtime.Generation;
using QLoRA.Runtime.Kernels;
using QLoRA.Runtime.Layers;
using QLoRA.Runtime.Tensors;
using Device = QLoRA.Runtime.Devices.Device;

namespace QLoRA.Runtime.Ops;

/// <summary>
/// The decode step's fused launches (see <see cref="FusedDecodeKernels"/>), each equal bit for bit to the plain ops it
/// replaces. Where a fusion does not apply — the CPU accelerator's CPU schedules, dense or mixed-type weights, more
/// than eight rows, an adapter on the projection — the plain ops run instead, with the same results.
/// </summary>
internal static class FusedDecode
{
    /// <summary>x += delta (when given), y = norm(x).</summary>
    public static void AddRmsNorm(DeviceTensor x, DeviceTensor? delta, RmsNormLayer norm, DeviceTensor y, DeviceTensor inverseRms, bool fuse = true)
    {
        if (!fuse || Cpu.CpuOps.Runs(x))
        {
            if (delta is not null)
            {
                Elementwise.Add(x, delta, x);
            }

            norm.Forward(x, y, inverseRms);
            return;
        }

        int rows = checked((int)x.Shape[0]), dim = checked((int)x.Shape[1]);
        ComputeDispatch.Run(x, new AddNormLaunch(x, delta ?? x, norm.Weight, y, inverseRms, rows, dim, norm.Epsilon, delta is null ? 0 : 1), nameof(x));
    }

    /// <summary>RoPE of q in place; k rotated and v copied into the cache at each row's position.</summary>
    public static void RopeAppend(DeviceTensor q3, DeviceTensor k3, DeviceTensor v3, DeviceTensor positions, DeviceTensor invFreq, KvCache cache, int layer, PagedRows rows, bool fuse = true)
    {
        if (!fuse || Cpu.CpuOps.Runs(q3))
        {
            Rope.Forward(q3, positions, invFreq);
            Rope.Forward(k3, positions, invFreq);
            PagedAttention.Write(k3, v3, cache, layer, rows);
            return;
        }

        var shape = new PagedAttentionShape(rows.Rows, checked((int)q3.Shape[1]), cache.KeyValueHeads, cache.HeadDim, 1f, 0, cache.PageTokens, rows.MaxPages);
        ComputeDispatch.Run(q3, new RopeAppendLaunch(q3, k3, v3, positions, invFreq, cache.Keys(layer), cache.Values(layer), rows, shape), nameof(q3));
    }

    /// <summary>
    /// y_i = x W_iᵀ (+ bias_i) (+ each row's LoRA delta from <paramref name="lora"/>'s shrink, projections module0 + i) for
    /// two or three projections sharing the input, in one launch when they can.
    /// </summary>
    public static void Project(DeviceTensor x, IReadOnlyList<QuantizedLinear> layers, IReadOnlyList<DeviceTensor> outputs, DecodeLora lora, int module0, bool fuse = true)
    {
        if (!fuse || !Fusable(x, layers))
        {
            for (int i = 0; i < layers.Count; i++)
            {
                layers[i].Forward(x, outputs[i]);
            }

            return;
        }

        ComputeDispatch.Run(x, new ThreeLaunch(x, layers, outputs, lora, module0), nameof(x));
    }

    /// <summary>act = silu(gate(x)) ⊙ up(x) (each with its rows' LoRA deltas, projections module0 and module0 + 1); gate and up are scratch for the plain path.</summary>
    public static void GateUp(DeviceTensor x, QuantizedLinear gate, QuantizedLinear up, DeviceTensor gateOut, DeviceTensor upOut, DeviceTensor act, DecodeLora lora, int module0, bool fuse = true)
    {
        if (!fuse || !Fusable(x, [gate, up]))
        {
            gate.Forward(x, gateOut);
            up.Forward(x, upOut);
            SwiGlu.Forward(gateOut, upOut, act);
            return;
        }

        ComputeDispatch.Run(x, new GateUpLaunch(x, gate, up, act, lora, module0), nameof(x));
    }

    /// <summary>
    /// y = x Wᵀ (+ bias) and, in the same launch, each row's shrink by its adapter's A of projection
    /// <paramref name="module"/> into <see cref="DecodeLora.XaOwn"/> (the next add + norm adds the expand).
    /// </summary>
    public static void ProjectShrink(DeviceTensor x, QuantizedLinear layer, DeviceTensor y, DecodeLora lora, int module) =>
        ComputeDispatch.Run(x, new ShrinkLaunch(x, layer, y, lora, module), nameof(x));

    /// <summary>
    /// x_out = x_in + (delta + its rows' LoRA expand from <see cref="DecodeLora.XaOwn"/>, projection deltaModule; −1 or no
    /// delta: none), normed = norm(x_out), and the shrink of normed by projections module0 … module0 + count − 1 into
    /// <see cref="DecodeLora.XaNext"/>. x_in and x_out are different buffers.
    /// </summary>
    public static void AddNormShrink(DeviceTensor xIn, DeviceTensor xOut, DeviceTensor? delta, int deltaModule, RmsNormLayer norm, DeviceTensor normed, DeviceTensor inverseRms,
        int module0, int count, DecodeLora lora) =>
        ComputeDispatch.Run(xIn, new AddNormShrinkLaunch(xIn, xOut, delta, deltaModule, norm, normed, inverseRms, module0, count, lora), nameof(xIn));

    /// <summary>Whether the adapters' fused launches apply: a GPU schedule, ≤ 8 rows, 4-bit projections fusable as the plain fused path needs, the row in shared memory.</summary>
    internal static bool LoraFusable(DeviceTensor x, DecoderBlockWeights w, DeviceTensor attention, DeviceTensor act) =>
        Fusable(x, [w.Q, w.K, w.V]) && Fusable(x, [w.Gate, w.Up]) && Fusable(attention, [w.O]) && Fusable(act, [w.Down])
        && (long)LoraDecodeKernels.SharedFloats(checked((int)x.Shape[1])) * sizeof(float) <= x.Device.Accelerator.MaxSharedMemoryPerGroup;

    // One GEMV launch over several weights: 4-bit, one code table and absmax layout, input rows ≤ 8 of width % 32, no adapter.
    private static bool Fusable(DeviceTensor x, IReadOnlyList<QuantizedLinear> layers) =>
        !Cpu.CpuOps.Runs(x) && x.Shape[0] <= 8 && x.Shape[1] % 32 == 0 && layers.All(l =>
            l.Weight is DeviceQuantizedTensor w && l.Lora is null && l.InFeatures == x.Shape[1]
            && w.State.Type == layers[0].Weight!.State.Type && w.State.BlockSize == layers[0].Weight!.State.BlockSize
            && w.HasNestedAbsmax == layers[0].Weight!.HasNestedAbsmax);

    private static GemvSegment<T, TAbsmax> Segment<T, TAbsmax>(QuantizedLinear layer, DeviceTensor y, TAbsmax absmax)
        where T : unmanaged
        where TAbsmax : struct, IAbsmaxSource =>
        // Without a bias the segment still needs a float view (never read): the weight's code table is one.
        new(layer.Weight!.PackedView, absmax, y.View<T>(), layer.Bias?.View<float>() ?? layer.Weight.TableView, layer.OutFeatures, layer.Bias is not null);

    private readonly record struct ThreeLaunch(DeviceTensor X, IReadOnlyList<QuantizedLinear> Layers, IReadOnlyList<DeviceTensor> Outputs, DecodeLora Lora, int Module0) : IComputeLaunch
    {
        public void Run<T, TE>()
            where T : unmanaged
            where TE : struct, IElement<T>
        {
            if (Layers[0].Weight!.HasNestedAbsmax)
            {
                Launch<T, TE, NestedAbsmaxSource>(l => l.Weight!.NestedSource());
            }
            else
            {
                Launch<T, TE, PlainAbsmaxSource>(l => l.Weight!.PlainSource());
            }
        }

        private void Launch<T, TE, TAbsmax>(Func<QuantizedLinear, TAbsmax> absmax)
            where T : unmanaged
            where TE : struct, IElement<T>
            where TAbsmax : struct, IAbsmaxSource
        {
            Device device = X.Device;
            var a = Segment<T, TAbsmax>(Layers[0], Outputs[0], absmax(Layers[0]));
            var b = Segment<T, TAbsmax>(Layers[1], Outputs[1], absmax(Layers[1]));
            // Two projections: the third segment is empty (no rows).
            var c = Layers.Count > 2 ? Segment<T, TAbsmax>(Layers[2], Outputs[2], absmax(Layers[2])) : new GemvSegment<T, TAbsmax>(b.Packed, b.Absmax, b.Y, b.Bias, 0, false);
            var shape = new FusedShape(checked((int)X.Shape[0]), checked((int)X.Shape[1]), Layers[0].Weight!.BlockShift);
            var kernel = device.Kernel(static acc => acc.LoadKernel<ArrayView<UInt4>, ArrayView<float>, GemvSegment<T, TAbsmax>, GemvSegment<T, TAbsmax>, GemvSegment<T, TAbsmax>, FusedShape, LoraBank<T>, LoraEpilogue>(FusedDecodeKernels.GemvThree<T, TE, TAbsmax>));
            kernel(device.Stream, device.GridStride, X.View<T>().Cast<UInt4>(), Layers[0].Weight!.TableView, a, b, c, shape, Lora.Bank<T>(), Lora.Epilogue(Module0));
        }
    }

    private readonly record struct GateUpLaunch(DeviceTensor X, QuantizedLinear Gate, QuantizedLinear Up, DeviceTensor Act, DecodeLora Lora, int Module0) : IComputeLaunch
    {
        public void Run<T, TE>()
            where T : unmanaged
            where TE : struct, IElement<T>
        {
            if (Gate.Weight!.HasNestedAbsmax)
            {
                Launch<T, TE, NestedAbsmaxSource>(Gate.Weight.NestedSource(), Up.Weight!.NestedSource());
            }
            else
            {
                Launch<T, TE, PlainAbsmaxSource>(Gate.Weight.PlainSource(), Up.Weight!.PlainSource());
            }
        }

        private void Launch<T, TE, TAbsmax>(TAbsmax gateAbsmax, TAbsmax upAbsmax)
            where T : unmanaged
            where TE : struct, IElement<T>
            where TAbsmax : struct, IAbsmaxSource
        {
            Device device = X.Device;
            var shape = new FusedShape(checked((int)X.Shape[0]), checked((int)X.Shape[1]), Gate.Weight!.BlockShift);
            var kernel = device.Kernel(static acc => acc.LoadKernel<ArrayView<UInt4>, ArrayView<float>, GemvSegment<T, TAbsmax>, GemvSegment<T, TAbsmax>, ArrayView<T>, FusedShape, LoraBank<T>, LoraEpilogue>(FusedDecodeKernels.GemvGateUp<T, TE, TAbsmax>));
            kernel(device.Stream, device.GridStride, X.View<T>().Cast<UInt4>(), Gate.Weight.TableView, Segment<T, TAbsmax>(Gate, Act, gateAbsmax), Segment<T, TAbsmax>(Up, Act, upAbsmax), Act.View<T>(), shape, Lora.Bank<T>(), Lora.Epilogue(Module0));
        }
    }

    private readonly record struct AddNormLaunch(DeviceTensor X, DeviceTensor Delta, DeviceTensor Weight, DeviceTensor Y, DeviceTensor InverseRms, int Rows, int Dim, float Eps, int HasDelta) : IComputeLaunch
    {
        public void Run<T, TE>()
            where T : unmanaged
            where TE : struct, IElement<T>
        {
            Device device = X.Device;
            var kernel = device.Kernel(static a => a.LoadKernel<ArrayView<T>, ArrayView<T>, ArrayView<float>, ArrayView<T>, ArrayView<float>, int, int, float, int>(FusedDecodeKernels.AddRmsNorm<T, TE>));
            kernel(device.Stream, device.GridStride, X.View<T>(), Delta.View<T>(), Weight.View<float>(), Y.View<T>(), InverseRms.View<float>(), Rows, Dim, Eps, HasDelta);
        }
    }

    private readonly record struct RopeAppendLaunch(DeviceTensor Q, DeviceTensor K, DeviceTensor V, DeviceTensor Positions, DeviceTensor InvFreq, DeviceTensor Keys, DeviceTensor Values, PagedRows Rows, PagedAttentionShape Shape) : IComputeLaunch
    {
        public void Run<T, TE>()
            where T : unmanaged
            where TE : struct, IElement<T>
        {
            Device device = Q.Device;
            var kernel = device.Kernel(static a => a.LoadKernel<ArrayView<T>, ArrayView<T>, ArrayView<T>, ArrayView<int>, ArrayView<float>, ArrayView<T>, ArrayView<T>, ArrayView<int>, ArrayView<int>, PagedAttentionShape>(FusedDecodeKernels.RopeAppend<T, TE>));
            kernel(device.Stream, device.GridStride, Q.View<T>(), K.View<T>(), V.View<T>(), Positions.View<int>(), InvFreq.View<float>(), Keys.View<T>(), Values.View<T>(), Rows.BlockTables.View<int>(), Rows.RowSequence.View<int>(), Shape);
        }
    }
    private readonly record struct ShrinkLaunch(DeviceTensor X, QuantizedLinear Layer, DeviceTensor Y, DecodeLora Lora, int Module) : IComputeLaunch
    {
        public void Run<T, TE>()
            where T : unmanaged
            where TE : struct, IElement<T>
        {
            if (Layer.Weight!.HasNestedAbsmax)
            {
                Launch<T, TE, NestedAbsmaxSource>(Layer.Weight.NestedSource());
            }
            else
            {
                Launch<T, TE, PlainAbsmaxSource>(Layer.Weight.PlainSource());
            }
        }

        private void Launch<T, TE, TAbsmax>(TAbsmax absmax)
            where T : unmanaged
            where TE : struct, IElement<T>
            where TAbsmax : struct, IAbsmaxSource
        {
            Device device = X.Device;
            var shape = new FusedShape(checked((int)X.Shape[0]), checked((int)X.Shape[1]), Layer.Weight!.BlockShift);
            var kernel = device.Kernel(static acc => acc.LoadKernel<ArrayView<UInt4>, ArrayView<T>, ArrayView<float>, GemvSegment<T, TAbsmax>, LoraBank<T>, ArrayView<float>, int, int, FusedShape>(LoraDecodeKernels.GemvShrink<T, TE, TAbsmax>));
            kernel(device.Stream, device.GridStride, X.View<T>().Cast<UInt4>(), X.View<T>(), Layer.Weight.TableView, Segment<T, TAbsmax>(Layer, Y, absmax), Lora.Bank<T>(), Lora.XaOwn.View<float>(), Module, Lora.Enabled ? Lora.MaxRank : 0, shape);
        }
    }

    private readonly record struct AddNormShrinkLaunch(DeviceTensor XIn, DeviceTensor XOut, DeviceTensor? Delta, int DeltaModule, RmsNormLayer Norm, DeviceTensor Normed, DeviceTensor InverseRms,
        int Module0, int Count, DecodeLora Lora) : IComputeLaunch
    {
        // Shrink dots a warp takes per row: few, so that the rows' dots spread over several groups.
        private const int DotsPerWarp = 2;

        public void Run<T, TE>()
            where T : unmanaged
            where TE : struct, IElement<T>
        {
            Device device = XIn.Device;
            int rows = checked((int)XIn.Shape[0]), dim = checked((int)XIn.Shape[1]), ws = device.Accelerator.WarpSize;
            int threads = Math.Max(ws, Math.Min(256, device.Accelerator.MaxNumThreadsPerGroup) / ws * ws), warps = threads / ws;
            int count = Lora.Enabled ? Count : 0, maxRank = Lora.MaxRank;
            int slices = Math.Max(1, ((count * maxRank) + (warps * DotsPerWarp) - 1) / (warps * DotsPerWarp));
            var args = new AddNormShrinkArgs<T>(XIn.View<T>(), XOut.View<T>(), (Delta ?? XIn).View<T>(), Lora.XaOwn.View<float>(), Delta is not null, Lora.Enabled ? DeltaModule : -1,
                Norm.Weight.View<float>(), Normed.View<T>(), InverseRms.View<float>(), Lora.XaNext.View<float>(), Module0, count, rows, dim, slices, maxRank, Norm.Epsilon);
            var config = new KernelConfig(
                checked((int)Math.Max(1, Math.Min((long)rows * slices, device.GroupCount))),
                threads,
                SharedMemoryConfig.RequestDynamic<float>(LoraDecodeKernels.SharedFloats(dim)));
            var kernel = device.Kernel(static a => a.LoadKernel<AddNormShrinkArgs<T>, LoraBank<T>>(LoraDecodeKernels.AddNormShrink<T, TE>));
            kernel(device.Stream, config, args, Lora.Bank<T>());
        }
    }
}
