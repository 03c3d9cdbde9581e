using QLoRA.Core;
using QLoRA.Runtime.Tensors;
using Device = QLoRA.Runtime.Devices.Device;

namespace QLoRA.Runtime.Engine;

/// <summary>
/// Tensors laid out in one device allocation, planned before anything is allocated (llm.c's
/// <c>fill_in_activation_sizes</c>): a training run sizes its arena once per (batch, tokens) budget, so steady-state
/// steps allocate nothing and the activation memory is known — and reported — before the first step.
/// </summary>
public sealed class ActivationArena : IDisposable
{
    /// <summary>Alignment of every tensor in the arena (bytes): wide vector loads and coalesced rows.</summary>
    public const int Alignment = 256;

    private readonly DeviceTensor _storage;

    private ActivationArena(DeviceTensor storage) => _storage = storage;

    /// <summary>Total bytes of the arena.</summary>
    public long Bytes => _storage.ByteLength;

    /// <summary>Allocates the planned layout; the returned tensors of <see cref="Layout.Add"/> become views into it.</summary>
    /// <exception cref="Memory.DeviceOutOfMemoryException">The device cannot hold the arena.</exception>
    public static ActivationArena Allocate(Device device, Layout layout)
    {
        var arena = new ActivationArena(DeviceTensor.Allocate(device, DType.U8, Math.Max(1, layout.Bytes)));
        layout.Bind(arena._storage);
        return arena;
    }

    /// <summary>Frees the arena (its views must no longer be used).</summary>
    public void Dispose() => _storage.Dispose();

    /// <summary>A plan of tensors: offsets are fixed as tensors are added; views exist once the arena is allocated.</summary>
    public sealed class Layout
    {
        private readonly List<Slot> _slots = [];

        /// <summary>Bytes the arena needs so far.</summary>
        public long Bytes { get; private set; }

        /// <summary>Reserves a tensor of <paramref name="dtype"/> and <paramref name="shape"/>.</summary>
        public Slot Add(DType dtype, params long[] shape)
        {
            long bytes = checked(shape.Aggregate(1L, (a, d) => checked(a * d)) * dtype.SizeInBytes());
            var slot = new Slot(Bytes, dtype, shape);
            _slots.Add(slot);
            Bytes = checked(Bytes + ((bytes + Alignment - 1) / Alignment * Alignment));
            return slot;
        }

        internal void Bind(DeviceTensor storage)
        {
            foreach (Slot slot in _slots)
            {
                slot.Tensor = storage.Slice(slot.Offset, slot.Dtype, slot.Shape);
            }
        }
    }

    /// <summary>One planned tensor; <see cref="Tensor"/> is its view once the arena is allocated.</summary>
    public sealed class Slot(long offset, DType dtype, long[] shape)
    {
        internal long Offset { get; } = offset;

        internal DType Dtype { get; } = dtype;

        internal long[] Shape { get; } = shape;

        /// <summary>The view into the arena.</summary>
        /// <exception cref="InvalidOperationException">The arena is not allocated yet.</exception>
        public DeviceTensor Tensor
        {
            get => _tensor ?? throw new InvalidOperationException("The arena holding this tensor is not allocated yet.");
            internal set => _tensor = value;
        }

        private DeviceTensor? _tensor;

        /// <summary>The view (implicitly), so planned slots read like tensors in the step's code.</summary>
        public static implicit operator DeviceTensor(Slot slot) => slot.Tensor;
    }
}
