using ILGPU;

namespace QLoRA.Runtime.Kernels;

/// <summary>
/// A [rows, K] row-major operand of the tensor-core GEMM as the m16n8k16 fragments read it: two consecutive k of one
/// row packed into one 32-bit register (lower k in the low half), or one element as float32 for the portable path.
/// Both read zero past the edges.
/// </summary>
internal interface IMmaOperand
{
    uint Pair(int row, int k);

    float Element(int row, int k);
}

/// <summary>A dense BF16/F16 matrix; <c>pairs</c> views the same memory two elements at a time (used when K is even).</summary>
internal readonly struct DenseOperand<TE>(ArrayView<ushort> values, ArrayView<uint> pairs, int rows, int columns) : IMmaOperand
    where TE : struct, IElement<ushort>
{
    private readonly ArrayView<ushort> _values = values;
    private readonly ArrayView<uint> _pairs = pairs;
    private readonly int _rows = rows;
    private readonly int _columns = columns;

    public uint Pair(int row, int k)
    {
        if (row >= _rows || k >= _columns)
        {
            return 0;
        }

        long index = ((long)row * _columns) + k;
        if ((_columns & 1) == 0)
        {
            return _pairs[index / 2]; // k is even, so the pair is 4-byte aligned
        }

        uint high = k + 1 < _columns ? _values[index + 1] : 0u;
        return _values[index] | (high << 16);
    }

    public float Element(int row, int k) => row < _rows && k < _columns ? default(TE).Load(_values[((long)row * _columns) + k]) : 0f;
}

/// <summary>
/// A packed 4-bit weight [rows, K] decoded while the fragment is loaded: code × block absmax in float32, rounded to the
/// compute dtype (exactly what dequantize-to-bf16 produces), never written to memory. One byte holds the pair
/// (k, k + 1) for even k, and a block (≥ 32 values) never splits it.
/// </summary>
internal readonly struct FourBitOperand<TE, TAbsmax>(ArrayView<byte> packed, TAbsmax absmax, ArrayView<float> table, int rows, int columns, int blockSize) : IMmaOperand
    where TE : struct, IElement<ushort>
    where TAbsmax : struct, IAbsmaxSource
{
    private readonly ArrayView<byte> _packed = packed;
    private readonly TAbsmax _absmax = absmax;
    private readonly ArrayView<float> _table = table;
    private readonly int _rows = rows;
    private readonly int _columns = columns;
    private readonly int _blockSize = blockSize;

    public uint Pair(int row, int k)
    {
        if (row >= _rows || k >= _columns)
        {
            return 0;
        }

        long index = ((long)row * _columns) + k;
        if ((index & 1) == 0 && k + 1 < _columns)
        {
            TE e = default;
            uint b = _packed[index / 2];
            float scale = _absmax.Get(index / _blockSize);
            return e.Store(_table[(int)(b >> 4)] * scale) | ((uint)e.Store(_table[(int)(b & 15)] * scale) << 16);
        }

        uint high = k + 1 < _columns ? Decode(index + 1) : 0u;
        return Decode(index) | (high << 16);
    }

    public float Element(int row, int k) => row < _rows && k < _columns ? default(TE).Load(Decode(((long)row * _columns) + k)) : 0f;

    private ushort Decode(long index)
    {
        byte b = _packed[index / 2];
        int code = (index & 1) == 0 ? b >> 4 : b & 15;
        return default(TE).Store(_table[code] * _absmax.Get(index / _blockSize));
    }
}
