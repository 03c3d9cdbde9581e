using ILGPU;

namespace QLoRA.Runtime.Kernels;

/// <summary>Where a kernel gets a block's absmax: stored as float32, or double-quantized.</summary>
internal interface IAbsmaxSource
{
    float Get(long block);
}

/// <summary>One float32 absmax per block.</summary>
internal readonly struct PlainAbsmaxSource(ArrayView<float> values) : IAbsmaxSource
{
    private readonly ArrayView<float> _values = values;

    public float Get(long block) => _values[block];
}

/// <summary>
/// Double-quantized absmax: code8[q] × nested[block / nestedBlockSize] + offset, in float32 (no FMA). The nested block
/// size is a power of two, passed as its log2: a shift instead of a 64-bit division (a ~80-instruction subroutine
/// call in the GPU's machine code) for every block a kernel decodes.
/// </summary>
internal readonly struct NestedAbsmaxSource(ArrayView<byte> codes, ArrayView<float> nested, ArrayView<float> code8, float offset, int nestedBlockShift) : IAbsmaxSource
{
    private readonly ArrayView<byte> _codes = codes;
    private readonly ArrayView<float> _nested = nested;
    private readonly ArrayView<float> _code8 = code8;
    private readonly float _offset = offset;
    private readonly int _nestedBlockShift = nestedBlockShift;

    public float Get(long block)
    {
        float scaled = _code8[(int)_codes[block]] * _nested[(int)(block >> _nestedBlockShift)];
        return scaled + _offset;
    }
}
