using ILGPU;
using ILGPU.Runtime;
using QLoRA.Core;
using QLoRA.Core.Quantization;
using QLoRA.Runtime.Devices;
using QLoRA.Runtime.Kernels;
using Device = QLoRA.Runtime.Devices.Device;

namespace QLoRA.Runtime.Tensors;

/// <summary>
/// A 4-bit tensor resident on a device: packed codes (padded to 16 bytes for vector loads), its absmax statistics
/// as stored (plain float32, or double-quantized codes + nested maxima + 8-bit map), and the 16-entry code table.
/// </summary>
public sealed partial class DeviceQuantizedTensor : IDisposable
{
    private readonly Device _device;
    private readonly DeviceArray<UInt4> _packed;
    private readonly DeviceArray<float> _table;
    private readonly DeviceArray<float>? _absmax;
    private readonly DeviceArray<byte>? _codes;
    private readonly DeviceArray<float>? _nested;
    private readonly DeviceArray<float>? _code8;

    private DeviceQuantizedTensor(Device device, QuantState state, DeviceArray<UInt4> packed, DeviceArray<float> table,
        DeviceArray<float>? absmax, DeviceArray<byte>? codes, DeviceArray<float>? nested, DeviceArray<float>? code8)
    {
        _device = device;
        State = state;
        _packed = packed;
        _table = table;
        _absmax = absmax;
        _codes = codes;
        _nested = nested;
        _code8 = code8;
    }

    /// <summary>Decoding parameters.</summary>
    public QuantState State { get; }

    /// <summary>Elements of the logical tensor.</summary>
    public long ElementCount => State.ElementCount;

    /// <summary>
    /// Copies a host 4-bit tensor to the device; its buffers come from the device's caching allocator, so the
    /// allocator's figures include the weights.
    /// </summary>
    public static DeviceQuantizedTensor Upload(Device device, QuantizedTensor tensor)
    {
        long chunks = (tensor.State.ElementCount + 31) / 32;
        var padded = new byte[Math.Max(1, chunks) * 16];
        tensor.Packed.Span.CopyTo(padded);
        var packed = DeviceArray<UInt4>.From(device, System.Runtime.InteropServices.MemoryMarshal.Cast<byte, UInt4>(padded));
        var table = DeviceArray<float>.From(device, FourBitCodes.Values(tensor.State.Type));
        return tensor.State.Absmax switch
        {
            PlainAbsmax plain => new DeviceQuantizedTensor(device, tensor.State, packed, table, DeviceArray<float>.From(device, plain.Values), null, null, null),
            DoubleQuantizedAbsmax dq => new DeviceQuantizedTensor(device, tensor.State, packed, table, null,
                DeviceArray<byte>.From(device, dq.Codes), DeviceArray<float>.From(device, dq.NestedAbsmax), DeviceArray<float>.From(device, dq.NestedCode)),
            _ => throw new NotSupportedException($"Absmax statistics {tensor.State.Absmax.GetType().Name} cannot be uploaded."),
        };
    }

    /// <summary>Dequantizes into <paramref name="output"/> as bf16 bits (n values).</summary>
    /// <exception cref="ArgumentException">The output holds fewer than n values.</exception>
    public void DequantizeToBf16(ArrayView<ushort> output)
    {
        CheckOutput(output.Length);
        WithAbsmax(new DequantizeBf16(this, output.SubView(0, output.Length / 8 * 8).Cast<UInt4>(), output));
    }

    /// <summary>Dequantizes into <paramref name="output"/> as float32 (n values).</summary>
    /// <exception cref="ArgumentException">The output holds fewer than n values.</exception>
    public void DequantizeToF32(ArrayView<float> output)
    {
        CheckOutput(output.Length);
        WithAbsmax(new DequantizeF32(this, output.SubView(0, output.Length / 4 * 4).Cast<UInt4>(), output));
    }

    /// <summary>A kernel launch written once for both absmax layouts; <see cref="WithAbsmax"/> picks this tensor's.</summary>
    private interface IAbsmaxLaunch
    {
        void Run<TAbsmax>(TAbsmax absmax)
            where TAbsmax : struct, IAbsmaxSource;
    }

    private void WithAbsmax<TLaunch>(TLaunch launch)
        where TLaunch : IAbsmaxLaunch
    {
        if (_absmax is not null)
        {
            launch.Run(new PlainAbsmaxSource(_absmax.View));
        }
        else
        {
            launch.Run(Nested());
        }
    }

    private readonly record struct DequantizeBf16(DeviceQuantizedTensor Weight, ArrayView<UInt4> Vectors, ArrayView<ushort> Output) : IAbsmaxLaunch
    {
        public void Run<TAbsmax>(TAbsmax absmax)
            where TAbsmax : struct, IAbsmaxSource
        {
            Device device = Weight._device;
            var kernel = device.Kernel(static a => a.LoadKernel<ArrayView<UInt4>, TAbsmax, ArrayView<float>, long, int, ArrayView<UInt4>, ArrayView<ushort>>(DequantizeKernels.ToBf16));
            kernel(device.Stream, device.GridStride, Weight._packed.View, absmax, Weight._table.View, Weight.ElementCount, Weight.BlockShift, Vectors, Output);
        }
    }

    private readonly record struct DequantizeF32(DeviceQuantizedTensor Weight, ArrayView<UInt4> Vectors, ArrayView<float> Output) : IAbsmaxLaunch
    {
        public void Run<TAbsmax>(TAbsmax absmax)
            where TAbsmax : struct, IAbsmaxSource
        {
            Device device = Weight._device;
            var kernel = device.Kernel(static a => a.LoadKernel<ArrayView<UInt4>, TAbsmax, ArrayView<float>, long, int, ArrayView<UInt4>, ArrayView<float>>(DequantizeKernels.ToF32));
            kernel(device.Stream, device.GridStride, Weight._packed.View, absmax, Weight._table.View, Weight.ElementCount, Weight.BlockShift, Vectors, Output);
        }
    }

    /// <summary>
    /// y = x · Wᵀ for a 2-D weight [out, in] straight from the packed codes (decode-time GEMV, batch 1…8).
    /// </summary>
    /// <param name="x">[batch, in], 1 ≤ batch ≤ 8, of a compute dtype (F32, BF16, F16).</param>
    /// <param name="y">[batch, out] of x's dtype, written (float32 sums, rounded once).</param>
    /// <exception cref="ArgumentException">Shapes disagree, batch is outside 1…8, or in is not a multiple of 32.</exception>
    public void Gemv(DeviceTensor x, DeviceTensor y)
    {
        if (State.Shape.Count != 2)
        {
            throw new InvalidOperationException($"GEMV needs a 2-D weight, not [{string.Join(", ", State.Shape)}].");
        }

        int outFeatures = checked((int)State.Shape[0]), inFeatures = checked((int)State.Shape[1]);
        if (x.Shape.Count != 2 || x.Shape[1] != inFeatures || x.Shape[0] is < 1 or > 8)
        {
            throw new ArgumentException($"x has shape [{string.Join(", ", x.Shape)}]; GEMV takes [1…8, {inFeatures}].", nameof(x));
        }

        if (inFeatures % 32 != 0)
        {
            throw new ArgumentException($"GEMV needs in_features to be a multiple of 32 (got {inFeatures}); use dequantize + GEMM.", nameof(x));
        }

        int batch = checked((int)x.Shape[0]);
        Ops.Shapes.Require(y, x.Dtype, [batch, outFeatures], nameof(y));
        if (Cpu.CpuOps.Runs(x))
        {
            unsafe
            {
                _device.Stream.Synchronize();
                Cpu.CpuGemv.Multiply((byte*)_packed.NativePtr, FourBitCodes.Values(State.Type).ToArray(), _hostAbsmax ??= State.Absmax.Decode(), State.BlockSize, outFeatures, inFeatures, (void*)x.NativePointer, (void*)y.NativePointer, Cpu.CpuMatrix.ElementOf(x.Dtype), batch);
            }

            return;
        }

        Ops.ComputeDispatch.Run(x, new GemvLaunch(this, x, y, new GemvShape(batch, outFeatures, inFeatures, BlockShift)), nameof(x));
    }

    private readonly record struct GemvLaunch(DeviceQuantizedTensor Weight, DeviceTensor X, DeviceTensor Y, GemvShape Shape) : Ops.IComputeLaunch
    {
        public void Run<T, TE>()
            where T : unmanaged
            where TE : struct, IElement<T> => Weight.WithAbsmax(new GemvKernel<T, TE>(Weight, X, Y, Shape));
    }

    private readonly record struct GemvKernel<T, TE>(DeviceQuantizedTensor Weight, DeviceTensor X, DeviceTensor Y, GemvShape Shape) : IAbsmaxLaunch
        where T : unmanaged
        where TE : struct, IElement<T>
    {
        public void Run<TAbsmax>(TAbsmax absmax)
            where TAbsmax : struct, IAbsmaxSource
        {
            Device device = Weight._device;
            var kernel = device.Kernel(static a => a.LoadKernel<ArrayView<UInt4>, TAbsmax, ArrayView<float>, ArrayView<UInt4>, ArrayView<T>, GemvShape>(Nf4GemvKernels.Gemv<T, TE, TAbsmax>));
            kernel(device.Stream, device.GridStride, Weight._packed.View, absmax, Weight._table.View, X.View<T>().Cast<UInt4>(), Y.View<T>(), Shape);
        }
    }

    /// <summary>
    /// C = α·X·op(W) + β·C with the weight decoded on the fly (no dequantized copy): op(W) = Wᵀ for the forward
    /// (X [m, in] → C [m, out]), or W for the input gradient (X [m, out] → C [m, in]). X and C share a compute dtype
    /// (F32, BF16, F16); sums run in float32.
    /// </summary>
    /// <param name="x">X of a compute dtype.</param>
    /// <param name="c">C of X's dtype.</param>
    /// <param name="transposeWeight">Multiply by Wᵀ (the forward) rather than W (the input gradient).</param>
    /// <param name="alpha">Scale of the product.</param>
    /// <param name="beta">Scale of the existing C.</param>
    /// <param name="path">
    /// <see cref="Ops.GemmPath.Auto"/>: with cuBLAS loaded and BF16 X, a transient bf16 copy of the weight and cuBLAS;
    /// else on sm_80+ the weight decoded into tensor-core fragments (rounded exactly as dequantize-to-bf16 rounds);
    /// else the portable decode-in-GEMM kernel.
    /// </param>
    /// <exception cref="ArgumentException">Shapes disagree, or tensor cores were asked for where they do not apply.</exception>
    public void Multiply(DeviceTensor x, DeviceTensor c, bool transposeWeight = true, float alpha = 1f, float beta = 0f, Ops.GemmPath path = Ops.GemmPath.Auto)
    {
        if (State.Shape.Count != 2)
        {
            throw new InvalidOperationException($"GEMM needs a 2-D weight, not [{string.Join(", ", State.Shape)}].");
        }

        int outFeatures = checked((int)State.Shape[0]), inFeatures = checked((int)State.Shape[1]);
        int inner = transposeWeight ? inFeatures : outFeatures, n = transposeWeight ? outFeatures : inFeatures;
        if (x.Shape.Count != 2 || x.Shape[1] != inner)
        {
            throw new ArgumentException($"x has shape [{string.Join(", ", x.Shape)}]; [m, {inner}] is required.", nameof(x));
        }

        int m = checked((int)x.Shape[0]);
        Ops.Shapes.Require(c, x.Dtype, [m, n], nameof(c));
        if (path == Ops.GemmPath.Cpu || (path == Ops.GemmPath.Auto && Cpu.CpuOps.Runs(x)))
        {
            if (_device.Kind != DeviceKind.Cpu)
            {
                throw new ArgumentException("The blocked SIMD GEMM runs on the CPU accelerator only.", nameof(path));
            }

            MultiplyOnCpu(x, c, transposeWeight, m, n, inner, alpha, beta);
            return;
        }

        if (path == Ops.GemmPath.Cublas || (path == Ops.GemmPath.Auto && !_device.Deterministic))
        {
            if (_device.Blas is Native.Cublas blas && x.Dtype == DType.BF16)
            {
                // As bitsandbytes does: a transient bf16 copy of the weight, then cuBLAS (the benchmark compares this
                // with the fused kernels, which never materialize the weight).
                using DeviceTensor dense = DeviceTensor.Allocate(_device, DType.BF16, outFeatures, inFeatures);
                DequantizeToBf16(dense.View<ushort>());
                blas.Gemm(x, dense, c, transposeB: transposeWeight, alpha: alpha, beta: beta);
                return;
            }

            if (path == Ops.GemmPath.Cublas)
            {
                throw new ArgumentException("cuBLAS with a dequantized copy needs BF16 X on a device where cuBLAS is loaded.", nameof(path));
            }
        }

        bool tensorCoreShape = x.Dtype is DType.BF16 or DType.F16;
        if (path == Ops.GemmPath.TensorCore && (!tensorCoreShape || !_device.CanHostTensorCoreTiles))
        {
            throw new ArgumentException(tensorCoreShape
                ? "The tensor-core GEMM needs groups of four 32-lane warps, which this accelerator cannot launch."
                : $"The tensor-core 4-bit GEMM takes BF16 or F16 X, not {x.Dtype}.", nameof(path));
        }

        if (path == Ops.GemmPath.TensorCore || (path == Ops.GemmPath.Auto && tensorCoreShape && _device.HasTensorCoreMma))
        {
            var mma = new MmaGemmShape(m, n, inner, alpha, beta);
            if (x.Dtype == DType.BF16)
            {
                WithAbsmax(new TensorCoreKernel<Bf16Element>(this, x, c, mma, transposeWeight));
            }
            else
            {
                WithAbsmax(new TensorCoreKernel<F16Element>(this, x, c, mma, transposeWeight));
            }

            return;
        }

        var shape = new Nf4GemmShape(m, outFeatures, inFeatures, BlockShift, transposeWeight ? 1 : 0, alpha, beta);
        Ops.ComputeDispatch.Run(x, new GemmLaunch(this, x, c, shape), nameof(x));
    }

    private float[]? _hostAbsmax;

    // The CPU accelerator's buffers are host memory: the GEMM decodes the packed codes in place while packing panels.
    private unsafe void MultiplyOnCpu(DeviceTensor x, DeviceTensor c, bool transposeWeight, int m, int n, int inner, float alpha, float beta)
    {
        _device.Stream.Synchronize();
        float[] absmax = _hostAbsmax ??= State.Absmax.Decode(); // bit-identical to the device's decode (see DequantizeKernelTests)
        var weight = new Cpu.FourBitPanelSource((byte*)_packed.NativePtr, FourBitCodes.Values(State.Type).ToArray(), absmax, checked((int)State.Shape[1]), State.BlockSize, transposeWeight);
        var left = new Cpu.CpuMatrix((void*)x.NativePointer, Cpu.CpuMatrix.ElementOf(x.Dtype), inner, transposed: false);
        var output = new Cpu.CpuOutput((void*)c.NativePointer, Cpu.CpuMatrix.ElementOf(c.Dtype), n);
        Cpu.CpuGemm.Multiply(left, weight, output, m, n, inner, alpha, beta);
    }

    private readonly record struct GemmLaunch(DeviceQuantizedTensor Weight, DeviceTensor X, DeviceTensor C, Nf4GemmShape Shape) : Ops.IComputeLaunch
    {
        public void Run<T, TE>()
            where T : unmanaged
            where TE : struct, IElement<T> => Weight.WithAbsmax(new GemmKernel<T, TE>(Weight, X, C, Shape));
    }

    private readonly record struct GemmKernel<T, TE>(DeviceQuantizedTensor Weight, DeviceTensor X, DeviceTensor C, Nf4GemmShape Shape) : IAbsmaxLaunch
        where T : unmanaged
        where TE : struct, IElement<T>
    {
        public void Run<TAbsmax>(TAbsmax absmax)
            where TAbsmax : struct, IAbsmaxSource
        {
            Device device = Weight._device;
            ArrayView<byte> bytes = Weight._packed.View.Cast<byte>();
            var kernel = device.Kernel(static a => a.LoadKernel<ArrayView<T>, ArrayView<byte>, TAbsmax, ArrayView<float>, ArrayView<T>, Nf4GemmShape>(Nf4GemmKernels.Gemm<T, TE, TAbsmax>));
            kernel(device.Stream, device.GridStride, X.View<T>(), bytes, absmax, Weight._table.View, C.View<T>(), Shape);
        }
    }

    // The mma B operand is [N, K]: W itself for the forward (N = out, K = in), Wᵀ for the input gradient (N = in, K = out).
    private readonly record struct TensorCoreKernel<TE>(DeviceQuantizedTensor Weight, DeviceTensor X, DeviceTensor C, MmaGemmShape Shape, bool TransposeWeight) : IAbsmaxLaunch
        where TE : struct, IElement<ushort>, IMmaHalf
    {
        public void Run<TAbsmax>(TAbsmax absmax)
            where TAbsmax : struct, IAbsmaxSource
        {
            Device device = Weight._device;
            var weight = new FourBitOperand<TE, TAbsmax>(Weight._packed.View.Cast<byte>(), absmax, Weight._table.View, Shape.N, Shape.K, Weight.BlockShift, TransposeWeight ? 0 : 1);
            var kernel = device.Kernel(static a => a.LoadKernel<DenseOperand<TE>, FourBitOperand<TE, TAbsmax>, ArrayView<ushort>, MmaGemmShape>(MmaGemmKernels.Gemm<DenseOperand<TE>, FourBitOperand<TE, TAbsmax>, ushort, TE, TE>));
            kernel(device.Stream, device.TensorCoreTiles(Shape.M, Shape.N), Ops.Gemm.Dense<TE>(X), weight, C.View<ushort>(), Shape);
        }
    }

    /// <summary>log2 of the block size: the kernels shift where they would divide (block sizes are powers of two).</summary>
    internal int BlockShift => Log2OfPowerOfTwo(State.BlockSize, "block size");

    private static int Log2OfPowerOfTwo(int size, string what) => int.IsPow2(size)
        ? int.Log2(size)
        : throw new NotSupportedException($"The device kernels decode 4-bit weights whose {what} is a power of two, not {size}.");

    private NestedAbsmaxSource Nested()
    {
        var dq = (DoubleQuantizedAbsmax)State.Absmax;
        return new NestedAbsmaxSource(_codes!.View, _nested!.View, _code8!.View, dq.Offset, Log2OfPowerOfTwo(dq.NestedBlockSize, "nested block size"));
    }

    private void CheckOutput(long length)
    {
        if (length < ElementCount)
        {
            throw new ArgumentException($"The output holds {length} values; the tensor has {ElementCount}.", "output");
        }
    }

    /// <summary>Frees the device buffers.</summary>
    public void Dispose()
    {
        _packed.Dispose();
        _table.Dispose();
        _absmax?.Dispose();
        _codes?.Dispose();
        _nested?.Dispose();
        _code8?.Dispose();
    }
}
