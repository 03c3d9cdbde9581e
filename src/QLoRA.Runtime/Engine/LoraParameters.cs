using QLoRA.Core;
using QLoRA.Runtime.Layers;
using QLoRA.Runtime.Ops;
using QLoRA.Runtime.Tensors;
using Device = QLoRA.Runtime.Devices.Device;

namespace QLoRA.Runtime.Engine;

/// <summary>
/// Every trained parameter of a model in flat buffers: float32 masters, float32 gradients and (for bf16/f16
/// activations) the adapters' masters rounded to the compute dtype — one tensor each, every adapter's A and B a view at
/// a fixed offset, followed by the modules trained whole (PEFT's modules_to_save: norms, embeddings, lm_head), whose
/// masters are copied into the model's own tensors after each step. One memset clears all gradients, one launch
/// rounds all adapters once per optimizer step, one optimizer launch updates everything, and paged optimizers page the
/// flat state buffer.
/// </summary>
public sealed class LoraParameters : IDisposable
{
    /// <summary>Offsets are multiples of this many elements (256 bytes of float32).</summary>
    public const int AlignmentElements = 64;

    private readonly List<Entry> _entries;
    private readonly List<WholeEntry> _whole;
    private readonly long _adapterElements;

    private LoraParameters(DeviceTensor values, DeviceTensor gradients, DeviceTensor? compute, List<Entry> entries, List<WholeEntry> whole, long adapterElements)
    {
        Values = values;
        Gradients = gradients;
        Compute = compute;
        _entries = entries;
        _whole = whole;
        _adapterElements = adapterElements;
    }

    /// <summary>F32 [<see cref="Count"/>]: every adapter's A and B (padding between them is zero).</summary>
    public DeviceTensor Values { get; }

    /// <summary>F32 [<see cref="Count"/>]: their gradients, laid out as <see cref="Values"/>.</summary>
    public DeviceTensor Gradients { get; }

    /// <summary>The adapters' values (the flat buffers' leading part) rounded to the compute dtype, or null when activations are float32.</summary>
    public DeviceTensor? Compute { get; }

    /// <summary>Elements of each flat buffer (trainable values plus alignment padding).</summary>
    public long Count => Values.ElementCount;

    /// <summary>Trainable values (without padding).</summary>
    public long TrainableCount => _entries.Sum(e => e.A.Count + e.B.Count) + _whole.Sum(w => w.Span.Count);

    /// <summary>The adapted modules in order, with where their tensors lie.</summary>
    public IReadOnlyList<Entry> Entries => _entries;

    /// <summary>The modules trained whole (modules_to_save), in order, with where their masters lie.</summary>
    public IReadOnlyList<WholeEntry> WholeModules => _whole;

    /// <summary>The float32 gradient of whole module <paramref name="module"/>, shaped as its tensor, or null when it is not trained.</summary>
    public DeviceTensor? GradientOf(string module) => _whole.FirstOrDefault(w => w.Module == module) is { } entry ? entry.Of(Gradients) : null;

    /// <summary>
    /// Moves the adapters attached to <paramref name="layers"/> (in this order) into flat buffers: each layer's slot is
    /// replaced by one over views of the buffers, with the same values, rank, scaling and dropout.
    /// </summary>
    /// <param name="device">Device of the layers.</param>
    /// <param name="layers">Named layers; those without an adapter are skipped.</param>
    /// <param name="computeDtype">Dtype of the activations the adapters multiply.</param>
    /// <param name="whole">Modules trained whole: name and the model's tensor (F32 norm weights, or a compute-dtype
    /// embedding / lm_head table), each refreshed from its float32 master by <see cref="RefreshCompute"/>.</param>
    /// <exception cref="ArgumentException">No layer has an adapter, or a whole module is listed twice.</exception>
    public static LoraParameters Flatten(Device device, IEnumerable<(string Name, QuantizedLinear Layer)> layers, DType computeDtype, IEnumerable<(string Module, DeviceTensor Tensor)>? whole = null)
    {
        var adapted = layers.Where(l => l.Layer.Lora is not null).ToList();
        if (adapted.Count == 0)
        {
            throw new ArgumentException("No layer has a LoRA adapter to train; attach adapters first.", nameof(layers));
        }

        long offset = 0;
        var placed = new List<(string Name, QuantizedLinear Layer, Span A, Span B)>();
        foreach ((string name, QuantizedLinear layer) in adapted)
        {
            LoraSlot slot = layer.Lora!;
            var a = new Span(offset, slot.A.Shape[0], slot.A.Shape[1]);
            offset = Align(checked(offset + a.Count));
            var b = new Span(offset, slot.B.Shape[0], slot.B.Shape[1]);
            offset = Align(checked(offset + b.Count));
            placed.Add((name, layer, a, b));
        }

        long adapterElements = offset;
        var wholePlaced = new List<WholeEntry>();
        foreach ((string module, DeviceTensor tensor) in whole ?? [])
        {
            if (wholePlaced.Any(w => w.Module == module))
            {
                throw new ArgumentException($"Module '{module}' is listed twice to be trained whole.", nameof(whole));
            }

            wholePlaced.Add(new WholeEntry(module, tensor, new Span(offset, 1, tensor.ElementCount)));
            offset = Align(checked(offset + tensor.ElementCount));
        }

        DeviceTensor values = DeviceTensor.Allocate(device, DType.F32, offset);
        DeviceTensor gradients = DeviceTensor.Allocate(device, DType.F32, offset);
        DeviceTensor? compute = computeDtype == DType.F32 ? null : DeviceTensor.Allocate(device, computeDtype, adapterElements);
        values.Clear();
        gradients.Clear();
        var entries = new List<Entry>();
        foreach ((string name, QuantizedLinear layer, Span a, Span b) in placed)
        {
            LoraSlot old = layer.Lora!;
            DeviceTensor va = a.Of(values), vb = b.Of(values);
            old.A.CopyTo(va);
            old.B.CopyTo(vb);
            layer.Lora = new LoraSlot(va, vb, a.Of(gradients), b.Of(gradients), compute is null ? null : a.Of(compute), compute is null ? null : b.Of(compute), old.Scaling, old.Dropout);
            old.Dispose();
            entries.Add(new Entry(name, layer, a, b));
        }

        foreach (WholeEntry entry in wholePlaced)
        {
            Elementwise.Convert(entry.Target, entry.Of(values)); // the master starts as the model's tensor
        }

        var parameters = new LoraParameters(values, gradients, compute, entries, wholePlaced, adapterElements);
        parameters.RefreshCompute();
        return parameters;
    }

    /// <summary>Sets every gradient to zero (one memset).</summary>
    public void ZeroGradients() => Gradients.Clear();

    /// <summary>
    /// Rounds the adapters' float32 masters to the compute dtype (one launch) and writes each whole module's master
    /// into the model's tensor (rounded to its dtype); call after each optimizer step.
    /// </summary>
    public void RefreshCompute()
    {
        if (Compute is not null)
        {
            Elementwise.Convert(Values.Slice(0, DType.F32, _adapterElements), Compute);
        }

        foreach (WholeEntry entry in _whole)
        {
            Elementwise.Convert(entry.Of(Values), entry.Target);
        }
    }

    /// <summary>
    /// Frees the flat buffers; each layer keeps a standalone copy of its adapter as trained (so a model outlives its
    /// training run with its adapters in place).
    /// </summary>
    public void Dispose()
    {
        foreach (Entry entry in _entries)
        {
            if (entry.Layer.Lora is LoraSlot slot && slot.A.NativePointer == entry.A.Of(Values).NativePointer)
            {
                entry.Layer.Lora = new LoraSlot(Values.Device, slot.A.ToHost<float>(), slot.B.ToHost<float>(), slot.Rank,
                    entry.Layer.InFeatures, entry.Layer.OutFeatures, slot.Scaling, slot.Dropout) { DropoutSeed = slot.DropoutSeed };
            }
        }

        Values.Dispose();
        Gradients.Dispose();
        Compute?.Dispose();
    }

    /// <summary>Elements rounded up to <see cref="AlignmentElements"/> (each adapter tensor starts at such an offset).</summary>
    internal static long Align(long elements) => checked((elements + AlignmentElements - 1) / AlignmentElements * AlignmentElements);

    /// <summary>A module trained whole: its name (PEFT's module path), the model's tensor, and where its float32 master lies.</summary>
    public sealed record WholeEntry(string Module, DeviceTensor Target, Span Span)
    {
        /// <summary>This module's view of a flat float32 buffer, shaped as its tensor.</summary>
        public DeviceTensor Of(DeviceTensor flat) => flat.Slice(Span.Offset * sizeof(float), DType.F32, [.. Target.Shape]);
    }

    /// <summary>One adapted module: its name (PEFT's module path), layer, and where A [r, in] and B [out, r] lie.</summary>
    public sealed record Entry(string Module, QuantizedLinear Layer, Span A, Span B);

    /// <summary>A 2-D tensor at an element offset of the flat buffers.</summary>
    public readonly record struct Span(long Offset, long Rows, long Columns)
    {
        /// <summary>Elements.</summary>
        public long Count => Rows * Columns;

        /// <summary>The view of this span in a flat buffer.</summary>
        public DeviceTensor Of(DeviceTensor flat) => flat.Slice(Offset * flat.Dtype.SizeInBytes(), flat.Dtype, Rows, Columns);
    }
}
