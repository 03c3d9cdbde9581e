using ILGPU;

namespace QLoRA.Runtime.Kernels;

/// <summary>
/// A [rows, K] row-major operand of the tensor-core GEMM as the m16n8k16 fragments read it: two consecutive k of one
/// row packed into one 32-bit register (lower k in the low half), or one element as float32 for the portable path.
/// Both read zero past the edges.
/// </summary>
internal interface IMmaOperand
{
    /// <summary>Whether the operand is stored transposed ([K, rows]): staging then walks rows fastest, to stay coalesced.</summary>
    bool Transposed { get; }

    uint Pair(int row, int k);

    float Element(int row, int k);
}

/// <summary>
/// A dense BF16/F16 operand [rows, K], stored row-major or, when <c>transposed</c>, as its transpose [K, rows] (then a
/// pair's two elements come from two stored rows). <c>pairs</c> views the same memory two elements at a time (used
/// when stored rows have even length and are not transposed).
/// </summary>
internal readonly struct DenseOperand<TE>(ArrayView<ushort> values, ArrayView<uint> pairs, int rows, int columns, int transposed) : IMmaOperand
    where TE : struct, IElement<ushort>
{
    private readonly ArrayView<ushort> _values = values;
    private readonly ArrayView<uint> _pairs = pairs;
    private readonly int _rows = rows;
    private readonly int _columns = columns;
    private readonly int _transposed = transposed;

    public bool Transposed => _transposed != 0;

    public uint Pair(int row, int k)
    {
        if (row >= _rows || k >= _columns)
        {
            return 0;
        }

        if (_transposed == 0 && (_columns & 1) == 0)
        {
            return _pairs[(((long)row * _columns) + k) >> 1]; // k is even, so the pair is 4-byte aligned
        }

        uint high = k + 1 < _columns ? _values[Index(row, k + 1)] : 0u;
        return _values[Index(row, k)] | (high << 16);
    }

    public float Element(int row, int k) => row < _rows && k < _columns ? default(TE).Load(_values[Index(row, k)]) : 0f;

    private long Index(int row, int k) => _transposed != 0 ? ((long)k * _rows) + row : ((long)row * _columns) + k;
}

/// <summary>
/// A packed 4-bit weight decoded while the fragment is loaded: code × block absmax in float32, rounded to the compute
/// dtype (exactly what dequantize-to-bf16 produces), never written to memory. The operand is W [rows, K] itself (the
/// forward x·Wᵀ), or with <c>transposed</c> Wᵀ, i.e. W is stored [K, rows] (the input gradient dy·W). Untransposed,
/// one byte holds the pair (k, k + 1) for even k, and a block (≥ 32 values) never splits it.
/// </summary>
internal readonly struct FourBitOperand<TE, TAbsmax>(ArrayView<byte> packed, TAbsmax absmax, ArrayView<float> table, int rows, int columns, int blockShift, int transposed) : IMmaOperand
    where TE : struct, IElement<ushort>
    where TAbsmax : struct, IAbsmaxSource
{
    private readonly ArrayView<byte> _packed = packed;
    private readonly TAbsmax _absmax = absmax;
    private readonly ArrayView<float> _table = table;
    private readonly int _rows = rows;
    private readonly int _columns = columns;
    private readonly int _blockShift = blockShift;
    private readonly int _transposed = transposed;

    public bool Transposed => _transposed != 0;

    public uint Pair(int row, int k)
    {
        if (row >= _rows || k >= _columns)
        {
            return 0;
        }

        long index = Index(row, k);
        if (_transposed == 0 && (index & 1) == 0 && k + 1 < _columns)
        {
            TE e = default;
            uint b = _packed[index >> 1];
            float scale = _absmax.Get(index >> _blockShift);
            return e.Store(_table[(int)(b >> 4)] * scale) | ((uint)e.Store(_table[(int)(b & 15)] * scale) << 16);
        }

        uint high = k + 1 < _columns ? Decode(Index(row, k + 1)) : 0u;
        return Decode(index) | (high << 16);
    }

    public float Element(int row, int k) => row < _rows && k < _columns ? default(TE).Load(Decode(Index(row, k))) : 0f;

    private long Index(int row, int k) => _transposed != 0 ? ((long)k * _rows) + row : ((long)row * _columns) + k;

    private ushort Decode(long index)
    {
        byte b = _packed[index >> 1];
        int code = (index & 1) == 0 ? b >> 4 : b & 15;
        return default(TE).Store(_table[code] * _absmax.Get(index >> _blockShift));
    }
}
