using System.Threading.Channels;
using QLoRA.Runtime.Engine;
using QLoRA.Runtime.Tensors;

namespace QLoRA.Runtime.Generation;

/// <summary>
/// Serves generation on one model: requests from any thread join a running batch (continuous batching) — each step
/// decodes one token for every running sequence and feeds waiting prompts in chunks with the remaining row budget; a
/// sequence that finishes returns its cache pages at once and a waiting one takes its place at the next step. The KV
/// cache is paged (<see cref="KvCache"/>), sampling runs on the device (<see cref="SamplingOptions"/>), and several
/// LoRA adapters can serve side by side (<see cref="Adapters"/>). A sequence's tokens do not depend on what else is in
/// the batch: each row's arithmetic is its own, and its draws come from its own seed.
/// A request reserves cache pages for its longest possible length when it is admitted, so a running sequence never
/// waits for memory; requests beyond the pool wait in order.
/// </summary>
public sealed class GenerationEngine : IDisposable
{
    private readonly EngineModel _model;
    private readonly StepRunner _runner;
    private readonly Sampler _sampler;
    private readonly Queue<Active> _waiting = new();
    private readonly List<Active> _running = [];
    private readonly Stack<int> _slots;
    private readonly object _gate = new();
    private readonly SemaphoreSlim _wake = new(0);
    private readonly CancellationTokenSource _shutdown = new();
    private readonly Thread _loop;
    private long _steps;

    /// <summary>Allocates the cache and the step arena for <paramref name="model"/> and starts the scheduler thread.</summary>
    public GenerationEngine(EngineModel model, GenerationEngineOptions? options = null)
    {
        Options = options ?? new GenerationEngineOptions();
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(Options.MaxBatch);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(Options.PageTokens);
        ArgumentOutOfRangeException.ThrowIfLessThan(Options.StepTokens, Options.MaxBatch);
        _model = model;
        MaxSequenceLength = Options.MaxSequenceLength > 0 ? Options.MaxSequenceLength : Math.Min(4096, model.Config.MaxPositionEmbeddings);
        long cacheTokens = Options.CacheTokens > 0 ? Options.CacheTokens : Math.Min(65_536L, (long)Options.MaxBatch * MaxSequenceLength);
        Cache = KvCache.For(model, Math.Max(cacheTokens, MaxSequenceLength), Options.PageTokens);
        _runner = new StepRunner(model, Cache, Options.StepTokens, Options.MaxBatch, Cache.PagesFor(MaxSequenceLength)) { UseGraphs = Options.CudaGraphs };
        _sampler = new Sampler(model.Embed.Table.Device, model.Config.VocabSize, Options.MaxBatch, Options.MaxBatch);
        _slots = new Stack<int>(Enumerable.Range(0, Options.MaxBatch).Reverse());
        Adapters = new AdapterTable(model);
        _loop = new Thread(Loop) { IsBackground = true, Name = "QLoRA generation" };
        _loop.Start();
    }

    /// <summary>The options it was created with.</summary>
    public GenerationEngineOptions Options { get; }

    /// <summary>The model.</summary>
    public EngineModel Model => _model;

    /// <summary>Longest sequence (prompt + output).</summary>
    public int MaxSequenceLength { get; }

    /// <summary>The paged KV cache.</summary>
    public KvCache Cache { get; }

    /// <summary>Adapters served next to the base, chosen per request by <see cref="GenerationRequest.Adapter"/>.</summary>
    public AdapterTable Adapters { get; }

    /// <summary>Steps run so far.</summary>
    public long Steps => Interlocked.Read(ref _steps);

    /// <summary>Batch sizes whose decode step runs as a captured CUDA graph (0 on the CPU accelerator or with graphs off).</summary>
    public int CapturedGraphs => _runner.CapturedGraphs;

    /// <summary>Kernel launches the engine's device has issued (see <see cref="Devices.Device.LaunchCount"/>).</summary>
    public long Launches => _model.Embed.Table.Device.LaunchCount;

    /// <summary>Device bytes of the cache and the step arena.</summary>
    public long DeviceBytes => Cache.Bytes + _runner.ArenaBytes;

    /// <summary>Generates until a stop token, MaxTokens or cancellation.</summary>
    /// <exception cref="ArgumentException">The request is invalid (empty prompt, an id outside the vocabulary, too long, unknown adapter).</exception>
    public Task<GenerationResult> GenerateAsync(GenerationRequest request, CancellationToken cancellationToken = default) =>
        Submit(request, cancellationToken, stream: false).Completion.Task;

    /// <summary>Generates synchronously (see <see cref="GenerateAsync"/>).</summary>
    public GenerationResult Generate(GenerationRequest request, CancellationToken cancellationToken = default) =>
        GenerateAsync(request, cancellationToken).GetAwaiter().GetResult();

    /// <summary>Generates all requests together (they batch) and returns the results in request order.</summary>
    public IReadOnlyList<GenerationResult> GenerateBatch(IEnumerable<GenerationRequest> requests, CancellationToken cancellationToken = default)
    {
        var tasks = requests.Select(r => GenerateAsync(r, cancellationToken)).ToArray();
        return Task.WhenAll(tasks).GetAwaiter().GetResult();
    }

    /// <summary>Streams the generated tokens as they are sampled; the sequence stops when the enumeration is cancelled or abandoned.</summary>
    public async IAsyncEnumerable<GeneratedToken> StreamAsync(GenerationRequest request, [System.Runtime.CompilerServices.EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        using var abandon = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        Active active = Submit(request, abandon.Token, stream: true);
        try
        {
            await foreach (GeneratedToken token in active.Tokens!.Reader.ReadAllAsync(CancellationToken.None).ConfigureAwait(false))
            {
                yield return token;
            }

            await active.Completion.Task.ConfigureAwait(false); // rethrows a failed step
        }
        finally
        {
            abandon.Cancel(); // an abandoned enumeration ends the sequence and frees its pages
        }
    }

    /// <summary>Streams, then returns the finished result (for callers that want both).</summary>
    internal (ChannelReader<GeneratedToken> Tokens, Task<GenerationResult> Result) Start(GenerationRequest request, CancellationToken cancellationToken)
    {
        Active active = Submit(request, cancellationToken, stream: true);
        return (active.Tokens!.Reader, active.Completion.Task);
    }

    private Active Submit(GenerationRequest request, CancellationToken cancellationToken, bool stream)
    {
        ObjectDisposedException.ThrowIf(_shutdown.IsCancellationRequested, this);
        int vocab = _model.Config.VocabSize;
        if (request.PromptIds.Count == 0)
        {
            throw new ArgumentException("The prompt has no tokens.", nameof(request));
        }

        for (int i = 0; i < request.PromptIds.Count; i++)
        {
            if ((uint)request.PromptIds[i] >= vocab)
            {
                throw new ArgumentException($"Prompt token {i} has id {request.PromptIds[i]}, outside the vocabulary of {vocab}.", nameof(request));
            }
        }

        if (request.PromptIds.Count >= MaxSequenceLength)
        {
            throw new ArgumentException($"The prompt has {request.PromptIds.Count} tokens; this engine's sequences hold {MaxSequenceLength} (GenerationEngineOptions.MaxSequenceLength).", nameof(request));
        }

        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(request.MaxTokens);
        request.Sampling.Validate(vocab);
        ServingAdapter? adapter = request.Adapter is null ? null : Adapters.Acquire(request.Adapter);
        var active = new Active(request, adapter, cancellationToken, stream,
            request.Sampling.Seed ?? (ulong)Random.Shared.NextInt64(),
            Math.Min(request.MaxTokens, MaxSequenceLength - request.PromptIds.Count));
        lock (_gate)
        {
            _waiting.Enqueue(active);
        }

        _wake.Release();
        return active;
    }

    private void Loop()
    {
        // On CUDA the engine's work goes to a stream of its own: graphs cannot be captured on the legacy default stream,
        // and other users of the device do not serialize behind decoding.
        Devices.Device device = _model.Embed.Table.Device;
        using ILGPU.Runtime.AcceleratorStream? stream = device.Kind == Devices.DeviceKind.Cuda ? device.CreateStream() : null;
        using IDisposable? scope = stream is null ? null : device.UseStream(stream);
        while (!_shutdown.IsCancellationRequested)
        {
            bool idle;
            lock (_gate)
            {
                idle = _running.Count == 0 && _waiting.Count == 0;
            }

            if (idle)
            {
                try
                {
                    _wake.Wait(_shutdown.Token);
                }
                catch (OperationCanceledException)
                {
                    break;
                }

                continue;
            }

            try
            {
                Step();
            }
            catch (Exception e)
            {
                // A failed step fails the sequences in it; the engine goes on with the next requests.
                foreach (Active a in _running.ToArray())
                {
                    Finish(a, null, e);
                }
            }
        }

        lock (_gate)
        {
            foreach (Active a in _running.Concat(_waiting).ToArray())
            {
                Finish(a, FinishReason.Cancelled, null);
            }

            _waiting.Clear();
        }
    }

    private void Step()
    {
        foreach (Active a in _running.Where(a => a.Cancellation.IsCancellationRequested).ToArray())
        {
            Finish(a, FinishReason.Cancelled, null);
        }

        Admit();
        if (_running.Count == 0)
        {
            return;
        }

        // Decode rows first (one each), then prompt chunks with what is left of the row budget. Pieces that sample
        // this step come first, so their logits are the leading rows.
        int budget = Options.StepTokens;
        var sampling = new List<(Active Sequence, StepPiece Piece)>();
        var feeding = new List<StepPiece>();
        foreach (Active a in _running.Where(a => a.Prefilled == a.Request.PromptIds.Count))
        {
            sampling.Add((a, new StepPiece(a.Kv, [a.Output[^1]], a.Adapter)));
            budget--;
        }

        foreach (Active a in _running.Where(a => a.Prefilled < a.Request.PromptIds.Count))
        {
            int n = Math.Min(budget, a.Request.PromptIds.Count - a.Prefilled);
            if (n <= 0)
            {
                break;
            }

            int[] chunk = [.. a.Request.PromptIds.Skip(a.Prefilled).Take(n)];
            a.Prefilled += n;
            budget -= n;
            var piece = new StepPiece(a.Kv, chunk, a.Adapter);
            if (a.Prefilled == a.Request.PromptIds.Count)
            {
                sampling.Add((a, piece));
            }
            else
            {
                feeding.Add(piece);
            }
        }

        DeviceTensor logits = _runner.Run([.. sampling.Select(s => s.Piece), .. feeding]);
        Interlocked.Increment(ref _steps);
        if (sampling.Count == 0)
        {
            return;
        }

        var rows = sampling.Select(s => new SampleRow(s.Sequence.Request.Sampling, s.Sequence.Seed, s.Sequence.Output.Count, s.Sequence.Slot)).ToList();
        (int[] ids, float[] logProbs) = _sampler.Sample(logits.Rows(0, sampling.Count), rows);
        for (int i = 0; i < sampling.Count; i++)
        {
            Active a = sampling[i].Sequence;
            int id = ids[i];
            if (a.Request.StopTokenIds.Contains(id))
            {
                Finish(a, FinishReason.Stop, null, id);
                continue;
            }

            a.Output.Add(id);
            a.LogProbs.Add(logProbs[i]);
            a.Tokens?.Writer.TryWrite(new GeneratedToken(id, logProbs[i], a.Output.Count - 1));
            if (a.Output.Count >= a.Limit)
            {
                Finish(a, FinishReason.Length, null);
            }
        }
    }

    // Waiting requests join while the batch has room and the pool has pages for their longest length.
    private void Admit()
    {
        lock (_gate)
        {
            while (_waiting.Count > 0 && _running.Count < Options.MaxBatch)
            {
                Active next = _waiting.Peek();
                if (next.Cancellation.IsCancellationRequested)
                {
                    _waiting.Dequeue();
                    Finish(next, FinishReason.Cancelled, null);
                    continue;
                }

                int longest = next.Request.PromptIds.Count + next.Limit;
                if (!Cache.TryReserve(next.Kv, longest))
                {
                    if (_running.Count == 0)
                    {
                        _waiting.Dequeue();
                        Finish(next, null, new InvalidOperationException($"A sequence of {longest} positions needs {Cache.PagesFor(longest)} cache pages; the pool has {Cache.PageCount} (GenerationEngineOptions.CacheTokens)."));
                        continue;
                    }

                    break; // wait for a running sequence to free its pages
                }

                _waiting.Dequeue();

                // The caller's uploads (a hot-loaded adapter, the model itself) went to the default stream: the
                // engine's stream waits for them on the device (a CUDA event) before the sequence runs.
                Devices.Device device = _model.Embed.Table.Device;
                Native.CudaEvents.Order(device.Stream, device.Accelerator.DefaultStream);
                if (next.Request.Sampling.UsesPenalties)
                {
                    next.Slot = _slots.Pop();
                    _sampler.ResetSlot(next.Slot, [.. next.Request.PromptIds]);
                }

                _running.Add(next);
            }
        }
    }

    private void Finish(Active a, FinishReason? reason, Exception? error, int? stopToken = null)
    {
        lock (_gate)
        {
            if (!_running.Remove(a) && error is null && reason != FinishReason.Cancelled)
            {
                return;
            }

            Cache.Release(a.Kv);
            if (a.Slot >= 0)
            {
                _slots.Push(a.Slot);
                a.Slot = -1;
            }
        }

        a.Adapter?.Release();
        a.Tokens?.Writer.TryComplete(error);
        if (error is not null)
        {
            a.Completion.TrySetException(error);
        }
        else
        {
            a.Completion.TrySetResult(new GenerationResult(a.Request.PromptIds, [.. a.Output], [.. a.LogProbs], reason!.Value, stopToken));
        }
    }

    /// <summary>Stops the scheduler (running and waiting requests end as cancelled) and frees the cache and arena.</summary>
    public void Dispose()
    {
        if (_shutdown.IsCancellationRequested)
        {
            return;
        }

        _shutdown.Cancel();
        _loop.Join();
        _runner.Dispose();
        _sampler.Dispose();
        Cache.Dispose();
        _shutdown.Dispose();
        _wake.Dispose();
    }

    private sealed class Active(GenerationRequest request, ServingAdapter? adapter, CancellationToken cancellation, bool stream, ulong seed, int limit)
    {
        public GenerationRequest Request { get; } = request;

        public ServingAdapter? Adapter { get; } = adapter;

        public CancellationToken Cancellation { get; } = cancellation;

        public ulong Seed { get; } = seed;

        public int Limit { get; } = limit;

        public KvSequence Kv { get; } = new();

        public int Prefilled { get; set; }

        public int Slot { get; set; } = -1;

        public List<int> Output { get; } = [];

        public List<float> LogProbs { get; } = [];

        public Channel<GeneratedToken>? Tokens { get; } = stream ? Channel.CreateUnbounded<GeneratedToken>(new UnboundedChannelOptions { SingleWriter = true, SingleReader = true }) : null;

        public TaskCompletionSource<GenerationResult> Completion { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);
    }
}
