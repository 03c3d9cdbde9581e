using QLoRA.Core;
using QLoRA.Core.Peft;
using QLoRA.Runtime.Engine;
using QLoRA.Runtime.Layers;
using QLoRA.Runtime.Ops;
using QLoRA.Runtime.Tensors;

namespace QLoRA.Runtime.Generation;

/// <summary>
/// A LoRA adapter held for serving next to others on one frozen base (multi-LoRA, as LoRAX and vLLM serve): its A/B
/// on the device in float32 with copies in the compute dtype rounded once at load, one per adapted projection.
/// Requests name the adapter they want; sequences of different adapters share one batch. Unloading waits for the
/// sequences still using it: the memory goes when the last one finishes.
/// </summary>
public sealed class ServingAdapter
{
    private readonly LoraSlot?[] _slots;
    private int _users;
    private bool _unloaded;
    private readonly object _gate = new();

    private ServingAdapter(string name, LoraAdapter source, LoraSlot?[] slots)
    {
        Name = name;
        Source = source;
        _slots = slots;
    }

    /// <summary>The name requests choose it by.</summary>
    public string Name { get; }

    /// <summary>The PEFT adapter it was built from.</summary>
    public LoraAdapter Source { get; }

    /// <summary>Adapted projections.</summary>
    public int AdaptedModules => _slots.Count(s => s is not null);

    /// <summary>Places <paramref name="adapter"/> on <paramref name="model"/>'s projections (shapes checked, names PEFT's).</summary>
    /// <exception cref="PeftAdapterException">A module is missing from the model or its shapes disagree (named).</exception>
    public static ServingAdapter Create(EngineModel model, string name, LoraAdapter adapter)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(name);
        var projections = model.Projections().ToList();
        adapter.Validate(projections.ToDictionary(p => p.Name, p => (p.Layer.InFeatures, p.Layer.OutFeatures), StringComparer.Ordinal));
        var index = projections.Select((p, i) => (p.Name, i)).ToDictionary(p => p.Name, p => p.i, StringComparer.Ordinal);
        var slots = new LoraSlot?[projections.Count];
        DType compute = model.Embed.Table.Dtype;
        Devices.Device device = model.Embed.Table.Device;
        foreach (LoraModuleWeights module in adapter.Modules.Values)
        {
            var a = DeviceTensor.FromHost<float>(device, module.A.ToSingle(), DType.F32, module.Rank, module.InFeatures);
            var b = DeviceTensor.FromHost<float>(device, module.B.ToSingle(), DType.F32, module.OutFeatures, module.Rank);
            DeviceTensor? ca = compute == DType.F32 ? null : Elementwise.ConvertTo(a, compute);
            DeviceTensor? cb = compute == DType.F32 ? null : Elementwise.ConvertTo(b, compute);
            slots[index[module.Module]] = LoraSlot.ForInference(a, b, ca, cb, (float)adapter.Config.ScalingOf(module.Module));
        }

        return new ServingAdapter(name, adapter, slots);
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
                slot?.Dispose();
            }

            Array.Clear(_slots);
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
