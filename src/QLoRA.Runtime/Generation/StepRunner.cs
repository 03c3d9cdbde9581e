using QLoRA.Core;
using QLoRA.Runtime.Engine;
using QLoRA.Runtime.Kernels;
using QLoRA.Runtime.Layers;
using QLoRA.Runtime.Ops;
using QLoRA.Runtime.Tensors;
using Device = QLoRA.Runtime.Devices.Device;

namespace QLoRA.Runtime.Generation;

/// <summary>One sequence's part of a step: its new tokens (a prefill chunk, or the last sampled token) and its adapter.</summary>
/// <param name="Sequence">The sequence's cache state; its pages must already hold Length + Tokens.Length positions.</param>
/// <param name="Tokens">The new tokens, at positions Length, Length + 1, ….</param>
/// <param name="Adapter">The serving adapter for this sequence; null: the model as attached (its own adapters, if any).</param>
internal readonly record struct StepPiece(KvSequence Sequence, int[] Tokens, ServingAdapter? Adapter);

/// <summary>
/// The forward of one generation step over several sequences at once (continuous batching): every piece's new rows
/// go through the blocks together, each attending to its own sequence in the paged cache, and the logits of each
/// piece's last row come out — the rows that sample. One arena, planned once for a row budget; per step only the
/// ids, positions and block tables are uploaded. A decode step (≤ 8 rows) takes the fused launches of
/// <see cref="FusedDecode"/>: per block residual-add + norm, one q/k/v GEMV, RoPE + cache append, attention, o_proj,
/// add + norm, one gate/up GEMV with SwiGLU, down_proj — 8 launches. With serving adapters the same 8: each LoRA shrink
/// (x·Aᵀ) runs in the launch that completes its input (add + norm for q/k/v and gate/up, o's and down's own GEMV) and
/// each expand in the launch that consumes it (the GEMV epilogue, or the next add + norm); rows choose their adapter
/// through a device table, so a decode step with adapters is captured as a CUDA graph too (one per batch size and set of
/// adapters).
/// </summary>
internal sealed class StepRunner : IDisposable
{
    private readonly Device _device;
    private readonly EngineModel _model;
    private readonly KvCache _cache;
    private readonly EngineShape _shape;
    private readonly ActivationArena _arena;
    private readonly ActivationArena.Slot _x, _x2, _rowSlots, _normed, _q, _k, _v, _attention, _projected, _gate, _up, _act, _inverseRms;
    private readonly ActivationArena.Slot _positions, _rowSequence, _blockTables, _last, _lastNormed, _lastInverseRms, _logits, _ids, _lastRows;
    private readonly Dictionary<string, (Native.CudaGraph Graph, ServingAdapter[] Adapters)> _graphs = [];
    private readonly HashSet<string> _warmed = [];
    private readonly DeviceTensor _noBank, _noMeta, _noXa;
    private DeviceTensor? _xaNext, _xaOwn;
    private int _xaRank;
    private bool? _loraFusable;
    private readonly DeviceTensor _inverseFrequencies;
    private readonly QuantizedLinear[][] _projections;

    public StepRunner(EngineModel model, KvCache cache, int maxRows, int maxSequences, int maxPages)
    {
        _device = model.Embed.Table.Device;
        _model = model;
        _cache = cache;
        MaxRows = maxRows;
        MaxSequences = maxSequences;
        MaxPages = maxPages;
        EngineShape s = _shape = EngineShape.Of(model.Config, maxRows, model.Embed.Table.Dtype);
        DType c = s.ComputeDtype;
        var layout = new ActivationArena.Layout();
        _x = layout.Add(c, maxRows, s.Hidden);
        _x2 = layout.Add(c, maxRows, s.Hidden); // the residual stream ping-pongs between _x and _x2 in the adapters' fused path
        _rowSlots = layout.Add(DType.I32, maxRows);
        _normed = layout.Add(c, maxRows, s.Hidden);
        _q = layout.Add(c, maxRows, s.QueryDim);
        _k = layout.Add(c, maxRows, s.KeyValueDim);
        _v = layout.Add(c, maxRows, s.KeyValueDim);
        _attention = layout.Add(c, maxRows, s.QueryDim);
        _projected = layout.Add(c, maxRows, s.Hidden);
        _gate = layout.Add(c, maxRows, s.Intermediate);
        _up = layout.Add(c, maxRows, s.Intermediate);
        _act = layout.Add(c, maxRows, s.Intermediate);
        _inverseRms = layout.Add(DType.F32, maxRows);
        _positions = layout.Add(DType.I32, maxRows);
        _rowSequence = layout.Add(DType.I32, maxRows);
        _blockTables = layout.Add(DType.I32, maxSequences, maxPages);
        _last = layout.Add(c, maxSequences, s.Hidden);
        _lastNormed = layout.Add(c, maxSequences, s.Hidden);
        _lastInverseRms = layout.Add(DType.F32, maxSequences);
        _logits = layout.Add(DType.F32, maxSequences, s.Vocab);
        _ids = layout.Add(DType.I32, maxRows);
        _lastRows = layout.Add(DType.I32, maxSequences);
        _arena = ActivationArena.Allocate(_device, layout);
        _inverseFrequencies = DeviceTensor.FromHost<float>(_device, RopeFrequencies.Compute(model.Config.Rope, model.Config.HeadDim), DType.F32, model.Config.HeadDim / 2);
        _projections = [.. model.Blocks.Select(b => b.Projections.ToArray())];
        _noBank = DeviceTensor.Allocate(_device, c, 1);
        _noMeta = DeviceTensor.Allocate(_device, DType.I64, LoraBank<float>.MetaPerModule);
        _noXa = DeviceTensor.Allocate(_device, DType.F32, 1);
    }

    /// <summary>Rows (new tokens over all pieces) one step can take.</summary>
    public int MaxRows { get; }

    /// <summary>Pieces (sequences) one step can take.</summary>
    public int MaxSequences { get; }

    /// <summary>Block-table width: the longest sequence is MaxPages · pageTokens positions.</summary>
    public int MaxPages { get; }

    /// <summary>Take the fused decode launches where they apply (false: the plain ops, for comparison).</summary>
    public bool Fused { get; init; } = true;

    /// <summary>Device bytes of the step's arena.</summary>
    public long ArenaBytes => _arena.Bytes;

    /// <summary>
    /// Runs the pieces' new tokens through the model, writing their keys and values into the cache, and returns the
    /// logits of each piece's last row: F32 [pieces, vocab] on the device (valid until the next step). Advances every
    /// sequence's length and trims pages that fell out of a sliding window.
    /// </summary>
    public DeviceTensor Run(IReadOnlyList<StepPiece> pieces)
    {
        int rows = pieces.Sum(p => p.Tokens.Length);
        if (pieces.Count == 0 || pieces.Count > MaxSequences || rows > MaxRows || pieces.Any(p => p.Tokens.Length == 0))
        {
            throw new ArgumentException($"A step takes 1…{MaxSequences} pieces of at least one token and at most {MaxRows} rows; got {pieces.Count} pieces, {rows} rows.", nameof(pieces));
        }

        var ids = new int[rows];
        var positions = new int[rows];
        var sequenceOfRow = new int[rows];
        var lastRows = new int[pieces.Count];
        var tables = new int[pieces.Count * MaxPages];
        Array.Fill(tables, -1);
        int row = 0;
        for (int p = 0; p < pieces.Count; p++)
        {
            StepPiece piece = pieces[p];
            List<int> pages = piece.Sequence.PageTable;
            if (_cache.PagesFor(piece.Sequence.Length + piece.Tokens.Length) > Math.Min(pages.Count, MaxPages))
            {
                throw new InvalidOperationException($"Sequence {p} has pages for {pages.Count * _cache.PageTokens} positions; it needs {piece.Sequence.Length + piece.Tokens.Length} (at most {MaxPages * _cache.PageTokens}).");
            }

            pages.CopyTo(tables.AsSpan(p * MaxPages, pages.Count));
            for (int i = 0; i < piece.Tokens.Length; i++, row++)
            {
                ids[row] = piece.Tokens[i];
                positions[row] = piece.Sequence.Length + i;
                sequenceOfRow[row] = p;
            }

            lastRows[p] = row - 1;
        }

        _positions.Tensor.Rows(0, rows).CopyFromHost<int>(positions);
        _rowSequence.Tensor.Rows(0, rows).CopyFromHost<int>(sequenceOfRow);
        _blockTables.Tensor.Rows(0, pieces.Count).CopyFromHost<int>(tables);
        _ids.Tensor.Rows(0, rows).CopyFromHost<int>(ids);
        _lastRows.Tensor.Rows(0, pieces.Count).CopyFromHost<int>(lastRows);
        var ranges = AdapterRanges(pieces);
        ServingAdapter[] adapters = [.. pieces.Select(p => p.Adapter).OfType<ServingAdapter>().Distinct()];
        bool attached = _projections.Any(b => b.Any(p => p.Lora is not null)); // adapters on the model's own layers
        bool fusedLora = ranges is not null && !attached && LoraFusable(rows, adapters);
        if (fusedLora)
        {
            int[] slots = new int[rows];
            row = 0;
            foreach (StepPiece piece in pieces)
            {
                int slot = piece.Adapter is null ? -1 : Array.IndexOf(adapters, piece.Adapter);
                slots.AsSpan(row, piece.Tokens.Length).Fill(slot);
                row += piece.Tokens.Length;
            }

            _rowSlots.Tensor.Rows(0, rows).CopyFromHost<int>(slots);
            EnsureShrinkBuffers(adapters.Max(a => a.MaxRank));
        }

        var step = new Step(rows, pieces.Count, ids, lastRows, ranges, adapters, fusedLora, attached);
        string key = $"{rows}:{string.Join(',', adapters.Select(a => a.Id))}";
        DropStaleGraphs();
        if (!Graphable(step))
        {
            Forward(step);
        }
        else if (_graphs.TryGetValue(key, out var graph))
        {
            graph.Graph.Launch(_device.Stream);
        }
        else if (_warmed.Add(key))
        {
            Forward(step); // the first step of this shape runs plainly: kernels compile and load outside any capture
        }
        else if (Native.CudaGraph.TryCapture(_device.Stream, () => Forward(step)) is { } captured)
        {
            _graphs[key] = (captured, adapters);
            captured.Launch(_device.Stream);
        }
        else
        {
            UseGraphs = false; // capture is refused here: plain launches from now on
            Forward(step);
        }

        foreach (StepPiece piece in pieces)
        {
            piece.Sequence.Length += piece.Tokens.Length;
            _cache.TrimToWindow(piece.Sequence);
        }

        return R(_logits, pieces.Count);
    }

    /// <summary>Replay decode steps as CUDA graphs (one per batch size) where capture works; plain launches otherwise.</summary>
    public bool UseGraphs { get; set; } = true;

    /// <summary>Captured decode graphs (one per batch size and set of serving adapters).</summary>
    public int CapturedGraphs => _graphs.Count;

    /// <summary>Whether the last step took the adapters' fused launches.</summary>
    internal bool LastStepFusedAdapters { get; private set; }

    // What one step's forward reads besides the uploaded buffers.
    private sealed record Step(int Rows, int Pieces, int[] Ids, int[] LastRows, List<(int Start, int Count, ServingAdapter? Adapter)>? Ranges, ServingAdapter[] Adapters, bool FusedLora, bool AttachedAdapters);

    // A decode step (one row per sequence, at most 8) on CUDA with no attached adapter and no serving adapter off the
    // fused path: its launches read only fixed buffers.
    private bool Graphable(Step step) =>
        UseGraphs && Native.CudaGraph.IsAvailable && _device.Kind == Devices.DeviceKind.Cuda && !_device.IsProfiling && step.Rows == step.Pieces && step.Rows <= 8
        && (step.Ranges is null || step.FusedLora) && !step.AttachedAdapters;

    // The adapters' fused launches (no adapter attached to the model itself, checked by the caller): the fused path
    // applies to every block, at most eight adapters, each in the compute dtype.
    private bool LoraFusable(int rows, ServingAdapter[] adapters)
    {
        if (!Fused || rows > 8 || adapters.Length is 0 or > LoraBank<float>.Slots || adapters.Any(a => a.IsFreed || a.Bank.Dtype != _shape.ComputeDtype))
        {
            return false;
        }

        _loraFusable ??= _model.Blocks.All(w => FusedDecode.LoraFusable(R(_normed, 1), w, R(_attention, 1), R(_act, 1)));
        return _loraFusable.Value;
    }

    // Shrink buffers for the largest rank so far; growing them drops the graphs that captured the old ones.
    private void EnsureShrinkBuffers(int rank)
    {
        if (_xaNext is not null && rank <= _xaRank)
        {
            return;
        }

        _xaNext?.Dispose();
        _xaOwn?.Dispose();
        _xaRank = Math.Max(rank, 1);
        _xaNext = DeviceTensor.Allocate(_device, DType.F32, MaxRows * 3L * _xaRank);
        _xaOwn = DeviceTensor.Allocate(_device, DType.F32, MaxRows * (long)_xaRank);
        foreach (var entry in _graphs.Values)
        {
            entry.Graph.Dispose();
        }

        _graphs.Clear();
        _warmed.Clear();
    }

    // Graphs of adapters whose memory is gone can never run again (their keys name adapters no request can choose).
    private void DropStaleGraphs()
    {
        foreach (string key in _graphs.Where(g => g.Value.Adapters.Any(a => a.IsFreed)).Select(g => g.Key).ToList())
        {
            _graphs[key].Graph.Dispose();
            _graphs.Remove(key);
            _warmed.Remove(key);
        }
    }

    private void Forward(Step step)
    {
        LastStepFusedAdapters = step.FusedLora;
        if (step.FusedLora)
        {
            ForwardFusedAdapters(step);
            return;
        }

        int rows = step.Rows;
        var ranges = step.Ranges;
        var paged = new PagedRows(_blockTables.Tensor.Rows(0, step.Pieces), _rowSequence.Tensor.Rows(0, rows), _positions.Tensor.Rows(0, rows));
        DeviceTensor x = R(_x, rows), normed = R(_normed, rows), q = R(_q, rows), k = R(_k, rows), v = R(_v, rows);
        DeviceTensor attention = R(_attention, rows), projected = R(_projected, rows), gate = R(_gate, rows), up = R(_up, rows), act = R(_act, rows);
        DeviceTensor inverseRms = R(_inverseRms, rows), positionTensor = R(_positions, rows);
        EngineShape s = _shape;
        Elementwise.GatherRows(_model.Embed.Table, R(_ids, rows), step.Ids, x);
        DeviceTensor? pending = null; // the previous block's MLP output: the next norm adds it to the residual stream
        for (int l = 0; l < _model.Blocks.Count; l++)
        {
            DecoderBlockWeights w = _model.Blocks[l];
            FusedDecode.AddRmsNorm(x, pending, w.InputNorm, normed, inverseRms, Fused);
            if (ranges is null)
            {
                FusedDecode.Project(normed, [w.Q, w.K, w.V], [q, k, v], NoAdapters(), 0, Fused);
            }
            else
            {
                Project(l, 0, normed, q, ranges);
                Project(l, 1, normed, k, ranges);
                Project(l, 2, normed, v, ranges);
            }

            DeviceTensor q3 = q.Reshape(rows, s.Heads, s.HeadDim), k3 = k.Reshape(rows, s.KeyValueHeads, s.HeadDim), v3 = v.Reshape(rows, s.KeyValueHeads, s.HeadDim);
            FusedDecode.RopeAppend(q3, k3, v3, positionTensor, _inverseFrequencies, _cache, l, paged, Fused);
            PagedAttention.Forward(q3, _cache, l, paged, attention.Reshape(rows, s.Heads, s.HeadDim));
            Project(l, 3, attention, projected, ranges);
            FusedDecode.AddRmsNorm(x, projected, w.PostNorm, normed, inverseRms, Fused);
            if (ranges is null)
            {
                FusedDecode.GateUp(normed, w.Gate, w.Up, gate, up, act, NoAdapters(), 0, Fused);
            }
            else
            {
                Project(l, 4, normed, gate, ranges);
                Project(l, 5, normed, up, ranges);
                SwiGlu.Forward(gate, up, act);
            }

            Project(l, 6, act, projected, ranges);
            pending = projected;
        }

        Elementwise.Add(x, pending!, x);

        int n = step.Pieces;
        DeviceTensor last = R(_last, n), lastNormed = R(_lastNormed, n), logits = R(_logits, n);
        Elementwise.GatherRows(x, R(_lastRows, n), step.LastRows, last); // each piece's last row
        _model.Norm.Forward(last, lastNormed, R(_lastInverseRms, n));
        Gemm.Multiply(lastNormed, _model.LmHead, logits, transposeB: true);
    }

    // The adapters' fused decode step: 8 launches per block, as without adapters (see the class summary).
    private void ForwardFusedAdapters(Step step)
    {
        int rows = step.Rows;
        var paged = new PagedRows(_blockTables.Tensor.Rows(0, step.Pieces), _rowSequence.Tensor.Rows(0, rows), _positions.Tensor.Rows(0, rows));
        DeviceTensor x = R(_x, rows), spare = R(_x2, rows), normed = R(_normed, rows), q = R(_q, rows), k = R(_k, rows), v = R(_v, rows);
        DeviceTensor attention = R(_attention, rows), projected = R(_projected, rows), act = R(_act, rows);
        DeviceTensor inverseRms = R(_inverseRms, rows), positionTensor = R(_positions, rows);
        EngineShape s = _shape;
        var lora = new DecodeLora([.. step.Adapters.Select(a => a.Bank)], [.. step.Adapters.Select(a => a.Meta)], R(_rowSlots, rows),
            _xaNext!, _xaOwn!, _xaRank, enabled: true);
        Elementwise.GatherRows(_model.Embed.Table, R(_ids, rows), step.Ids, x);
        DeviceTensor? pending = null; // the previous block's down_proj base output; its expand is added with it
        int pendingModule = -1;
        for (int l = 0; l < _model.Blocks.Count; l++)
        {
            DecoderBlockWeights w = _model.Blocks[l];
            int m = l * 7; // the block's projections in adapter order: q, k, v, o, gate, up, down
            FusedDecode.AddNormShrink(x, spare, pending, pendingModule, w.InputNorm, normed, inverseRms, m, 3, lora);
            (x, spare) = (spare, x);
            FusedDecode.Project(normed, [w.Q, w.K, w.V], [q, k, v], lora, m);
            DeviceTensor q3 = q.Reshape(rows, s.Heads, s.HeadDim), k3 = k.Reshape(rows, s.KeyValueHeads, s.HeadDim), v3 = v.Reshape(rows, s.KeyValueHeads, s.HeadDim);
            FusedDecode.RopeAppend(q3, k3, v3, positionTensor, _inverseFrequencies, _cache, l, paged);
            PagedAttention.Forward(q3, _cache, l, paged, attention.Reshape(rows, s.Heads, s.HeadDim));
            FusedDecode.ProjectShrink(attention, w.O, projected, lora, m + 3);
            FusedDecode.AddNormShrink(x, spare, projected, m + 3, w.PostNorm, normed, inverseRms, m + 4, 2, lora);
            (x, spare) = (spare, x);
            FusedDecode.GateUp(normed, w.Gate, w.Up, R(_gate, rows), R(_up, rows), act, lora, m + 4);
            FusedDecode.ProjectShrink(act, w.Down, projected, lora, m + 6);
            pending = projected;
            pendingModule = m + 6;
        }

        // The last residual add with down's expand, and the final norm of every row; each piece's last row is gathered after.
        FusedDecode.AddNormShrink(x, spare, pending, pendingModule, _model.Norm, normed, inverseRms, 0, 0, lora);
        int n = step.Pieces;
        DeviceTensor lastNormed = R(_lastNormed, n), logits = R(_logits, n);
        Elementwise.GatherRows(normed, R(_lastRows, n), step.LastRows, lastNormed);
        Gemm.Multiply(lastNormed, _model.LmHead, logits, transposeB: true);
    }

    // The fused kernels' adapter arguments for a step without adapters (valid buffers, nothing read).
    private DecodeLora NoAdapters() => new([_noBank], [_noMeta], R(_rowSlots, 1), _noXa, _noXa, 1, enabled: false);

    // Row ranges of consecutive pieces sharing an adapter choice; null when every piece runs the model as attached.
    private static List<(int Start, int Count, ServingAdapter? Adapter)>? AdapterRanges(IReadOnlyList<StepPiece> pieces)
    {
        if (pieces.All(p => p.Adapter is null))
        {
            return null;
        }

        var ranges = new List<(int Start, int Count, ServingAdapter? Adapter)>();
        int row = 0;
        foreach (StepPiece piece in pieces)
        {
            if (ranges.Count > 0 && ranges[^1].Adapter == piece.Adapter)
            {
                ranges[^1] = (ranges[^1].Start, ranges[^1].Count + piece.Tokens.Length, piece.Adapter);
            }
            else
            {
                ranges.Add((row, piece.Tokens.Length, piece.Adapter));
            }

            row += piece.Tokens.Length;
        }

        return ranges;
    }

    // y = projection(x) with each row range's adapter: the base once for all rows, then each adapter's delta on its rows.
    private void Project(int layer, int index, DeviceTensor x, DeviceTensor y, List<(int Start, int Count, ServingAdapter? Adapter)>? ranges)
    {
        QuantizedLinear projection = _projections[layer][index];
        if (ranges is null)
        {
            projection.Forward(x, y);
            return;
        }

        projection.ForwardBase(x, y);
        foreach ((int start, int count, ServingAdapter? adapter) in ranges)
        {
            LoraSlot? slot = adapter is null ? projection.Lora : adapter.Slot((layer * 7) + index);
            if (slot is not null)
            {
                projection.AddAdapter(slot, x.Rows(start, count), y.Rows(start, count));
            }
        }
    }

    private static DeviceTensor R(ActivationArena.Slot slot, int rows) => slot.Tensor.Rows(0, rows);

    public void Dispose()
    {
        foreach (var entry in _graphs.Values)
        {
            entry.Graph.Dispose();
        }

        _arena.Dispose();
        _inverseFrequencies.Dispose();
        _noBank.Dispose();
        _noMeta.Dispose();
        _noXa.Dispose();
        _xaNext?.Dispose();
        _xaOwn?.Dispose();
    }
}
