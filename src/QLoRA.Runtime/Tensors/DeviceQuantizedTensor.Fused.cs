using ILGPU;
using QLoRA.Runtime.Kernels;

namespace QLoRA.Runtime.Tensors;

/// <summary>What the fused decode kernels read of a 4-bit weight.</summary>
public sealed partial class DeviceQuantizedTensor
{
    /// <summary>Whether the absmax are double-quantized (else plain float32).</summary>
    internal bool HasNestedAbsmax => _absmax is null;

    internal ArrayView<UInt4> PackedView => _packed.View;

    internal ArrayView<float> TableView => _table.View;

    internal PlainAbsmaxSource PlainSource() => new(_absmax!.View);

    internal NestedAbsmaxSource NestedSource() => Nested();
}
