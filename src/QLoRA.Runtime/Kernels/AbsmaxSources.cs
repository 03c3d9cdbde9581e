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

/// <summary>Double-quantized absmax: code8[q] × nested[block / nestedBlockSize] + offset, in float32 (no FMA).</summary>
internal readonly struct NestedAbsmaxSource(ArrayView<byte> codes, ArrayView<float> nested, ArrayView<float> code8, float offset, int nestedBlockSize) : IAbsmaxSource
{
    private readonly ArrayView<byte> _codes = codes;
    private readonly ArrayView<float> _nested = nested;
    private readonly ArrayView<float> _code8 = code8;
    private readonly float _offset = offset;
    private readonly int _nestedBlockSize = nestedBlockSize;

    public float Get(long block)
    {
        float scaled = _code8[(int)_codes[block]] * _nested[(int)(block / _nestedBlockSize)];
        return scaled + _offset;
    }
}
