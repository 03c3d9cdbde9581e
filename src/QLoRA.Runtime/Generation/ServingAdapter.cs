using QLoRA.Core;
using QLoRA.Core.Peft;
using QLoRA.Runtime.Engine;
using QLoRA.Runtime.Kernels;
using QLoRA.Runtime.Layers;
using QLoRA.Runtime.Ops;
using QLoRA.Runtime.Tensors;

namespace QLoRA.Runtime.Generation;

/// <summary>
/// A LoRA adapter held for serving next to others on one frozen base (multi-LoRA, as LoRAX and vLLM serve): every
/// adapted projection's A/B in one flat float32 buffer on the device, with a copy in the compute dtype rounded once at
/// load (what the fused decode kernels read, through a table of offsets, ranks and scalings).
/// Requests name the adapter they want; sequences of different adapters share one batch. Unloading waits for the
/// sequences still using it: the memory goes when the last one finishes.
/// </summary>
public sealed class ServingAdapter
{
    private static long s_nextId;
    private readonly LoraSlot?[] _slots;
    private readonly DeviceTensor _flat, _bank, _meta;
    private int _users;
    private bool _unloaded;
    private readonly object _gate = new();

    private ServingAdapter(string name, LoraAdapter source, LoraSlot?[] slots, DeviceTensor flat, DeviceTensor bank, DeviceTensor meta, int maxRank)
    {
        Name = name;
        Source = source;
        _slots = slots;
        (_flat, _bank, _meta) = (flat, bank, meta);
        MaxRank = maxRank;
        Id = Interlocked.Increment(ref s_nextId);
    }

    /// <summary>The name requests choose it by.</summary>
    public string Name { get; }

    /// <summary>The PEFT adapter it was built from.</summary>
    public LoraAdapter Source { get; }

    /// <summary>Adapted projections.</summary>
    public int AdaptedModules => _slots.Count(s => s is not null);

    /// <summary>Unique per adapter created in this process (captured decode graphs are keyed by it).</summary>
    internal long Id { get; }

    /// <summary>Every adapted projection's A [r, in] then B [out, r], in the compute dtype, one flat buffer (the fused decode kernels read it).</summary>
    internal DeviceTensor Bank => _bank;

    /// <summary>I64 [projections · 4]: offset of A, offset of B (elements of <see cref="Bank"/>), rank (0: not adapted), bits of the scaling.</summary>
    internal DeviceTensor Meta => _meta;

    /// <summary>The largest rank over its projections.</summary>
    internal int MaxRank { get; }

    /// <summary>True once unloaded and no sequence uses it: its memory is gone.</summary>
    internal bool IsFreed { get; private set; }

    /// <summary>Places <paramref name="adapter"/> on <paramref name="model"/>'s projections (shapes checked, names PEFT's).</summary>
    /// <exception cref="PeftAdapterException">A module is missing from the model or its shapes disagree, or the adapter saves modules whole (named).</exception>
    public static ServingAdapter Create(EngineModel model, string name, LoraAdapter adapter)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(name);
        if (adapter.SavedModules.Count > 0)
        {
            throw new PeftAdapterException(adapter.SourcePath, adapter.SavedModules.Keys.First(),
                "is saved whole (modules_to_save): it replaces base weights, so the adapter cannot be chosen per request; attach it to the model (LoraAttachment.AttachSaved) or merge it (qlora merge)");
        }

        var projections = model.Projections().ToList();
        adapter.Validate(projections.ToDictionary(p => p.Name, p => (p.Layer.InFeatures, p.Layer.OutFeatures), StringComparer.Ordinal));
        var index = projections.Select((p, i) => (p.Name, i)).ToDictionary(p => p.Name, p => p.i, StringComparer.Ordinal);
        var modules = adapter.Modules.Values.OrderBy(m => index[m.Module]).ToList();
        long total = 1; // at least one element, so that an adapter of no modules still has a buffer
        foreach (LoraModuleWeights module in modules)
        {
            total = checked(total + ((long)module.Rank * (module.InFeatures + module.OutFeatures)));
        }

        // One flat float32 buffer (A then B per module, in projection order) and its table; the compute copy is one conversion.
        var flat = new float[total];
        var meta = new long[projections.Count * LoraBank<float>.MetaPerModule];
        var offsets = new Dictionary<string, (long A, long B)>(StringComparer.Ordinal);
        long cursor = 0;
        foreach (LoraModuleWeights module in modules)
        {
            long a = cursor, b = a + ((long)module.Rank * module.InFeatures);
            module.A.ToSingle().CopyTo(flat.AsSpan(checked((int)a)));
            module.B.ToSingle().CopyTo(flat.AsSpan(checked((int)b)));
            cursor = b + ((long)module.OutFeatures * module.Rank);
            int m = index[module.Module] * LoraBank<float>.MetaPerModule;
            meta[m] = a;
            meta[m + 1] = b;
            meta[m + 2] = module.Rank;
            meta[m + 3] = BitConverter.SingleToUInt32Bits((float)adapter.Config.ScalingOf(module.Module));
            offsets[module.Module] = (a, b);
        }

        DType compute = model.Embed.Table.Dtype;
        Devices.Device device = model.Embed.Table.Device;
        DeviceTensor flatTensor = DeviceTensor.FromHost<float>(device, flat, DType.F32, total);
        DeviceTensor bank = compute == DType.F32 ? flatTensor : Elementwise.ConvertTo(flatTensor, compute);
        DeviceTensor metaTensor = DeviceTensor.FromHost<long>(device, meta, DType.I64, meta.Length);
        var slots = new LoraSlot?[projections.Count];
        int size = compute.SizeInBytes();
        foreach (LoraModuleWeights module in modules)
        {
            (long a, long b) = offsets[module.Module];
            DeviceTensor fa = flatTensor.Slice(a * sizeof(float), DType.F32, module.Rank, module.InFeatures);
            DeviceTensor fb = flatTensor.Slice(b * sizeof(float), DType.F32, module.OutFeatures, module.Rank);
            DeviceTensor? ca = compute == DType.F32 ? null : bank.Slice(a * size, compute, module.Rank, module.InFeatures);
            DeviceTensor? cb = compute == DType.F32 ? null : bank.Slice(b * size, compute, module.OutFeatures, module.Rank);
            slots[index[module.Module]] = LoraSlot.ForInference(fa, fb, ca, cb, (float)adapter.Config.ScalingOf(module.Module));
        }

        return new ServingAdapter(name, adapter, slots, flatTensor, bank, metaTensor, modules.Count == 0 ? 0 : modules.Max(m => m.Rank));
    }

    /// <summary>The slot of projection <paramref name="index"/> (in <see cref="EngineModel.Projections"/> order), or null.</summary>
    internal LoraSlot? Slot(int index) => _slots[index];

    /// <summary>Counts a sequence as using the adapter; false once it is unloaded.</summary>
    internal bool TryAcquire()
    {
        lock (_gate)
        {
            if (_unloaded)
            {
                return false;
            }

            _users++;
            return true;
        }
    }

    internal void Release()
    {
        lock (_gate)
        {
            _users--;
            FreeIfIdle();
        }
    }

    internal void Unload()
    {
        lock (_gate)
        {
            _unloaded = true;
            FreeIfIdle();
        }
    }

    private void FreeIfIdle()
    {
        if (_unloaded && _users == 0)
        {
            foreach (LoraSlot? slot in _slots)
            {
                slot?.Dispose(); // views of the flat buffers: nothing of their own
            }

            Array.Clear(_slots);
            if (!IsFreed)
            {
                IsFreed = true;
                _meta.Dispose();
                if (!ReferenceEquals(_bank, _flat))
                {
                    _bank.Dispose();
                }

                _flat.Dispose();
            }
        }
    }
}

/// <summary>
/// The adapters a generation engine serves, by name: load (hot, without touching the base or the running batch),
/// unload, look up. Thread-safe.
/// </summary>
public sealed class AdapterTable
{
    private readonly EngineModel _model;
    private readonly Dictionary<string, ServingAdapter> _adapters = new(StringComparer.Ordinal);

    internal AdapterTable(EngineModel model) => _model = model;

    /// <summary>Names of the loaded adapters.</summary>
    public IReadOnlyList<string> Names
    {
        get
        {
            lock (_adapters)
            {
                return [.. _adapters.Keys.Order(StringComparer.Ordinal)];
            }
        }
    }

    /// <summary>Loads a PEFT adapter folder under <paramref name="name"/> (replacing one of that name).</summary>
    /// <exception cref="PeftAdapterException">The folder is not a valid adapter for this model (named).</exception>
    public ServingAdapter Load(string name, string folder) => Add(name, LoraAdapter.Load(folder));

    /// <summary>Adds an in-memory adapter under <paramref name="name"/> (replacing one of that name).</summary>
    public ServingAdapter Add(string name, LoraAdapter adapter)
    {
        ServingAdapter created = ServingAdapter.Create(_model, name, adapter);
        lock (_adapters)
        {
            if (_adapters.Remove(name, out ServingAdapter? old))
            {
                old.Unload();
            }

            _adapters[name] = created;
        }

        return created;
    }

    /// <summary>Unloads <paramref name="name"/>: new requests cannot choose it; sequences using it finish with it.</summary>
    /// <returns>False when no adapter has that name.</returns>
    public bool Unload(string name)
    {
        lock (_adapters)
        {
            if (!_adapters.Remove(name, out ServingAdapter? adapter))
            {
                return false;
            }

            adapter.Unload();
            return true;
        }
    }

    /// <summary>The adapter named <paramref name="name"/>, acquired for one sequence.</summary>
    /// <exception cref="ArgumentException">No adapter has that name (the known ones are listed).</exception>
    internal ServingAdapter Acquire(string name)
    {
        lock (_adapters)
        {
            if (_adapters.TryGetValue(name, out ServingAdapter? adapter) && adapter.TryAcquire())
            {
                return adapter;
            }

            string known = _adapters.Count == 0 ? "none is loaded" : "loaded: " + string.Join(", ", _adapters.Keys.Order(StringComparer.Ordinal));
            throw new ArgumentException($"No adapter named '{name}' ({known}).", nameof(name));
        }
    }
}
