using QLoRA.Core;
using QLoRA.Runtime.Engine;
using QLoRA.Runtime.Tensors;
using Device = QLoRA.Runtime.Devices.Device;

namespace QLoRA.Runtime.Generation;

/// <summary>
/// The key/value cache of every layer as one pool of fixed-size pages (vLLM's paged attention): a page holds
/// <see cref="PageTokens"/> consecutive positions of one sequence, for every KV head (GQA: kvHeads, not heads), in the
/// compute dtype. Each sequence owns a block table (its pages in position order), so sequences of any length share the
/// pool without fragmentation and a finished one returns its pages at once. Allocated once; nothing grows per token.
/// Layout of each layer's keys and values: [pages · pageTokens, kvHeads, headDim]. Not thread-safe: the generation
/// engine's scheduler owns it.
/// </summary>
public sealed class KvCache : IDisposable
{
    private readonly DeviceTensor[] _keys, _values;
    private readonly Stack<int> _free;

    /// <summary>A pool of <paramref name="pages"/> pages for <paramref name="layers"/> layers.</summary>
    /// <exception cref="ArgumentOutOfRangeException">A size is not positive.</exception>
    public KvCache(Device device, int layers, int kvHeads, int headDim, DType dtype, int pages, int pageTokens = 16, int slidingWindow = 0)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(layers);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(kvHeads);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(headDim);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(pages);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(pageTokens);
        ArgumentOutOfRangeException.ThrowIfNegative(slidingWindow);
        Device = device;
        Layers = layers;
        KeyValueHeads = kvHeads;
        HeadDim = headDim;
        Dtype = dtype;
        PageCount = pages;
        PageTokens = pageTokens;
        SlidingWindow = slidingWindow;
        long rows = checked((long)pages * pageTokens);
        _keys = new DeviceTensor[layers];
        _values = new DeviceTensor[layers];
        for (int l = 0; l < layers; l++)
        {
            _keys[l] = DeviceTensor.Allocate(device, dtype, rows, kvHeads, headDim);
            _values[l] = DeviceTensor.Allocate(device, dtype, rows, kvHeads, headDim);
        }

        _free = new Stack<int>(Enumerable.Range(0, pages).Reverse());
    }

    /// <summary>A pool for <paramref name="model"/> holding <paramref name="tokens"/> positions in all (rounded up to pages).</summary>
    public static KvCache For(EngineModel model, long tokens, int pageTokens = 16)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(tokens);
        int pages = checked((int)((tokens + pageTokens - 1) / pageTokens));
        return new KvCache(model.Embed.Table.Device, model.Blocks.Count, model.Config.NumKeyValueHeads, model.Config.HeadDim,
            model.Embed.Table.Dtype, pages, pageTokens, model.Config.SlidingWindow ?? 0);
    }

    /// <summary>Bytes one position takes in every layer (keys and values).</summary>
    public static long BytesPerToken(int layers, int kvHeads, int headDim, DType dtype) => 2L * layers * kvHeads * headDim * dtype.SizeInBytes();

    /// <summary>The device.</summary>
    public Device Device { get; }

    /// <summary>Layers.</summary>
    public int Layers { get; }

    /// <summary>Key/value heads per position.</summary>
    public int KeyValueHeads { get; }

    /// <summary>Head dimension.</summary>
    public int HeadDim { get; }

    /// <summary>The dtype keys and values are stored in (the model's compute dtype).</summary>
    public DType Dtype { get; }

    /// <summary>Pages in the pool.</summary>
    public int PageCount { get; }

    /// <summary>Positions per page.</summary>
    public int PageTokens { get; }

    /// <summary>Mistral's sliding window (0: none): pages wholly before a sequence's window are returned to the pool.</summary>
    public int SlidingWindow { get; }

    /// <summary>Pages not held by any sequence.</summary>
    public int FreePages => _free.Count;

    /// <summary>Device bytes of the pool.</summary>
    public long Bytes => _keys.Sum(k => k.ByteLength) * 2;

    internal DeviceTensor Keys(int layer) => _keys[layer];

    internal DeviceTensor Values(int layer) => _values[layer];

    /// <summary>Pages a sequence needs to hold <paramref name="length"/> positions (all of them, or its window's).</summary>
    public int PagesFor(int length) => (length + PageTokens - 1) / PageTokens;

    /// <summary>
    /// Makes <paramref name="sequence"/> able to hold <paramref name="length"/> positions, taking pages from the pool;
    /// false (nothing taken) when the pool has too few.
    /// </summary>
    public bool TryReserve(KvSequence sequence, int length)
    {
        int needed = PagesFor(length) - sequence.PageTable.Count;
        if (needed <= 0)
        {
            return true;
        }

        if (needed > _free.Count)
        {
            return false;
        }

        for (int i = 0; i < needed; i++)
        {
            sequence.PageTable.Add(_free.Pop());
        }

        return true;
    }

    /// <summary>
    /// Returns pages that only hold positions outside the sliding window of a sequence of <paramref name="sequence"/>'s
    /// length (no query can see them again); their block-table entries become −1.
    /// </summary>
    public void TrimToWindow(KvSequence sequence)
    {
        if (SlidingWindow <= 0)
        {
            return;
        }

        // The next query is at position Length and sees keys from Length − window + 1 on.
        int firstVisible = sequence.Length - SlidingWindow + 1;
        for (int p = 0; p < sequence.PageTable.Count && ((p + 1) * PageTokens) <= firstVisible; p++)
        {
            if (sequence.PageTable[p] >= 0)
            {
                _free.Push(sequence.PageTable[p]);
                sequence.PageTable[p] = -1;
            }
        }
    }

    /// <summary>Returns every page of <paramref name="sequence"/> to the pool and empties it.</summary>
    public void Release(KvSequence sequence)
    {
        foreach (int page in sequence.PageTable)
        {
            if (page >= 0)
            {
                _free.Push(page);
            }
        }

        sequence.PageTable.Clear();
        sequence.Length = 0;
    }

    /// <summary>Frees the pool.</summary>
    public void Dispose()
    {
        foreach (DeviceTensor t in _keys.Concat(_values))
        {
            t.Dispose();
        }
    }
}

/// <summary>One sequence's view of a <see cref="KvCache"/>: its block table and how many positions are written.</summary>
public sealed class KvSequence
{
    /// <summary>Positions written (the next token goes to position <see cref="Length"/>).</summary>
    public int Length { get; internal set; }

    /// <summary>The pool pages holding positions [i·pageTokens, (i+1)·pageTokens), in order; −1 for a page trimmed by the window.</summary>
    internal List<int> PageTable { get; } = [];

    /// <summary>Pages held.</summary>
    public int Pages => PageTable.Count(p => p >= 0);
}
