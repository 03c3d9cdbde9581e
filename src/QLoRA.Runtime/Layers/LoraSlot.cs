using QLoRA.Core;
using QLoRA.Runtime.Tensors;
using Device = QLoRA.Runtime.Devices.Device;

namespace QLoRA.Runtime.Layers;

/// <summary>
/// The LoRA adapter of a linear layer: A [r, in], B [out, r], scaling s (alpha / r, or alpha / √r with rsLoRA), dropout
/// on the adapter's input (training only), and float32 gradients. y += s · (dropout(x) Aᵀ) Bᵀ. A and B are float32 master
/// weights; when activations are BF16 or F16 the layer rounds them to that dtype for each product, as autocast does.
/// </summary>
public sealed class LoraSlot : IDisposable
{
    /// <summary>Creates a slot from host matrices (float32, row-major).</summary>
    /// <exception cref="ArgumentException">Shapes disagree with rank and features.</exception>
    /// <exception cref="ArgumentOutOfRangeException">Dropout is outside [0, 1).</exception>
    public LoraSlot(Device device, float[] a, float[] b, int rank, int inFeatures, int outFeatures, float scaling, double dropout = 0)
    {
        if (!(dropout >= 0 && dropout < 1))
        {
            throw new ArgumentOutOfRangeException(nameof(dropout), dropout, "LoRA dropout must be in [0, 1).");
        }

        if (a.Length != (long)rank * inFeatures || b.Length != (long)outFeatures * rank)
        {
            throw new ArgumentException($"LoRA A must be [{rank}, {inFeatures}] and B [{outFeatures}, {rank}]; got {a.Length} and {b.Length} values.");
        }

        Rank = rank;
        Scaling = scaling;
        Dropout = dropout;
        A = DeviceTensor.FromHost<float>(device, a, DType.F32, rank, inFeatures);
        B = DeviceTensor.FromHost<float>(device, b, DType.F32, outFeatures, rank);
        _gradA = Zeroed(A);
        _gradB = Zeroed(B);
    }

    /// <summary>
    /// A slot over views of an adapter's flat buffers (see <see cref="Engine.LoraParameters"/>): the masters, their
    /// gradients and, when activations are narrower than float32, the copies rounded to the compute dtype once per step.
    /// </summary>
    internal LoraSlot(DeviceTensor a, DeviceTensor b, DeviceTensor gradA, DeviceTensor gradB, DeviceTensor? computeA, DeviceTensor? computeB, float scaling, double dropout)
    {
        Rank = checked((int)a.Shape[0]);
        Scaling = scaling;
        Dropout = dropout;
        A = a;
        B = b;
        _gradA = gradA;
        _gradB = gradB;
        ComputeA = computeA;
        ComputeB = computeB;
    }

    /// <summary>A rounded to the compute dtype (kept current by the owner of the flat buffers), or null.</summary>
    internal DeviceTensor? ComputeA { get; }

    /// <summary>B rounded to the compute dtype, or null.</summary>
    internal DeviceTensor? ComputeB { get; }

    /// <summary>Rank r.</summary>
    public int Rank { get; }

    /// <summary>s in y += s·(x Aᵀ) Bᵀ.</summary>
    public float Scaling { get; }

    /// <summary>Probability of dropping an element of the adapter's input during training (lora_dropout).</summary>
    public double Dropout { get; }

    /// <summary>
    /// Seed of the dropout mask; the trainer sets a new one per step (and per layer). Forward and backward of one step
    /// must see the same seed: the mask is regenerated from it, not stored.
    /// </summary>
    public uint DropoutSeed { get; set; }

    /// <summary>lora_A.weight [r, in].</summary>
    public DeviceTensor A { get; }

    /// <summary>lora_B.weight [out, r].</summary>
    public DeviceTensor B { get; }

    private DeviceTensor? _gradA, _gradB;
    private readonly bool _ownsCompute;

    /// <summary>Accumulated gradient of A (allocated, zeroed, on first use for a slot made for inference).</summary>
    public DeviceTensor GradA => _gradA ??= Zeroed(A);

    /// <summary>Accumulated gradient of B (allocated, zeroed, on first use for a slot made for inference).</summary>
    public DeviceTensor GradB => _gradB ??= Zeroed(B);

    private static DeviceTensor Zeroed(DeviceTensor like)
    {
        DeviceTensor t = DeviceTensor.Allocate(like.Device, DType.F32, [.. like.Shape]);
        t.Clear();
        return t;
    }

    /// <summary>
    /// A slot for serving: it owns A, B and their compute-dtype copies (null for F32 compute); no gradient memory
    /// until something asks for it.
    /// </summary>
    internal static LoraSlot ForInference(DeviceTensor a, DeviceTensor b, DeviceTensor? computeA, DeviceTensor? computeB, float scaling) =>
        new(a, b, computeA, computeB, scaling);

    private LoraSlot(DeviceTensor a, DeviceTensor b, DeviceTensor? computeA, DeviceTensor? computeB, float scaling)
    {
        Rank = checked((int)a.Shape[0]);
        Scaling = scaling;
        A = a;
        B = b;
        ComputeA = computeA;
        ComputeB = computeB;
        _ownsCompute = true;
    }

    /// <summary>Sets both gradients to zero.</summary>
    public void ZeroGradients()
    {
        ILGPU.Runtime.ArrayViewExtensions.MemSetToZero(GradA.View<float>(), GradA.Device.Stream);
        ILGPU.Runtime.ArrayViewExtensions.MemSetToZero(GradB.View<float>(), GradB.Device.Stream);
    }

    /// <summary>Frees the device tensors.</summary>
    public void Dispose()
    {
        A.Dispose();
        B.Dispose();
        _gradA?.Dispose();
        _gradB?.Dispose();
        if (_ownsCompute)
        {
            ComputeA?.Dispose();
            ComputeB?.Dispose();
        }
    }
}
