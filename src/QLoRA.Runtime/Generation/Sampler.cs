using ILGPU;
using ILGPU.Runtime;
using QLoRA.Core;
using QLoRA.Runtime.Kernels;
using QLoRA.Runtime.Tensors;
using Device = QLoRA.Runtime.Devices.Device;

namespace QLoRA.Runtime.Generation;

/// <summary>One row to sample: its options, which draw of its sequence it is, and its penalty-state slot (−1: none).</summary>
internal readonly record struct SampleRow(SamplingOptions Options, ulong Seed, int Step, int Slot);

/// <summary>
/// Chooses tokens from F32 logits [rows, vocab] on the device (<see cref="SamplingKernels"/>): only the chosen ids and
/// their log-probabilities come back to the host. Holds the per-slot penalty state (which tokens each sequence's
/// prompt and output contain, and how often it generated each) for the sequences that ask for penalties.
/// </summary>
internal sealed class Sampler : IDisposable
{
    private readonly Device _device;
    private readonly int _vocab, _maxRows, _slots;
    private readonly DeviceTensor _work, _parameters, _chosen, _logProbs;
    private DeviceTensor? _history, _generated, _biasIds, _biasValues;

    public Sampler(Device device, int vocab, int maxRows, int slots)
    {
        _device = device;
        _vocab = vocab;
        _maxRows = maxRows;
        _slots = slots;
        _work = DeviceTensor.Allocate(device, DType.F32, maxRows, vocab);
        _parameters = DeviceTensor.Allocate(device, DType.U8, (long)maxRows * System.Runtime.CompilerServices.Unsafe.SizeOf<SamplingRow>());
        _chosen = DeviceTensor.Allocate(device, DType.I32, maxRows);
        _logProbs = DeviceTensor.Allocate(device, DType.F32, maxRows);
    }

    /// <summary>
    /// Starts penalty state for <paramref name="slot"/>: the prompt's tokens count as seen (repetition penalty), nothing
    /// as generated.
    /// </summary>
    public void ResetSlot(int slot, ReadOnlySpan<int> prompt)
    {
        if (_history is null || _generated is null)
        {
            _history = DeviceTensor.Allocate(_device, DType.I32, _slots, _vocab);
            _generated = DeviceTensor.Allocate(_device, DType.I32, _slots, _vocab);
        }

        var seen = new int[_vocab];
        foreach (int id in prompt)
        {
            seen[id] = 1;
        }

        _history.Rows(slot, 1).CopyFromHost<int>(seen);
        _generated.Rows(slot, 1).Clear();
    }

    /// <summary>Samples one token per row of <paramref name="logits"/> (F32 [rows, vocab]).</summary>
    public (int[] Ids, float[] LogProbs) Sample(DeviceTensor logits, IReadOnlyList<SampleRow> rows)
    {
        int n = rows.Count;
        if (n == 0 || n > _maxRows || logits.Shape[0] != n || logits.Shape[1] != _vocab || logits.Dtype != DType.F32)
        {
            throw new ArgumentException($"Expected F32 [{n}, {_vocab}] logits for 1…{_maxRows} rows.", nameof(logits));
        }

        var parameters = new SamplingRow[n];
        var biasIds = new List<int>();
        var biasValues = new List<float>();
        for (int r = 0; r < n; r++)
        {
            SampleRow row = rows[r];
            SamplingOptions o = row.Options;
            parameters[r] = new SamplingRow
            {
                Temperature = (float)o.Temperature,
                TopK = o.TopK,
                TopP = (float)o.TopP,
                MinP = (float)o.MinP,
                Repetition = (float)o.RepetitionPenalty,
                Presence = (float)o.PresencePenalty,
                Frequency = (float)o.FrequencyPenalty,
                Seed = row.Seed,
                Step = row.Step,
                Slot = row.Slot,
                BiasStart = biasIds.Count,
                BiasCount = o.LogitBias?.Count ?? 0,
            };
            foreach ((int id, float value) in o.LogitBias ?? new Dictionary<int, float>())
            {
                biasIds.Add(id);
                biasValues.Add(value);
            }
        }

        if (rows.Any(r => r.Slot >= 0) && _history is null)
        {
            throw new InvalidOperationException("A row asks for penalty state that was never reset.");
        }

        _parameters.Rows(0, (long)n * System.Runtime.CompilerServices.Unsafe.SizeOf<SamplingRow>()).CopyFromHost<SamplingRow>(parameters);
        if (biasIds.Count > (_biasIds?.ElementCount ?? 0))
        {
            // Grown only when a step carries more bias entries than ever before; a step without bias uploads nothing.
            _biasIds?.Dispose();
            _biasValues?.Dispose();
            _biasIds = DeviceTensor.Allocate(_device, DType.I32, biasIds.Count);
            _biasValues = DeviceTensor.Allocate(_device, DType.F32, biasIds.Count);
        }

        if (biasIds.Count > 0)
        {
            _biasIds!.Rows(0, biasIds.Count).CopyFromHost<int>(biasIds.ToArray());
            _biasValues!.Rows(0, biasIds.Count).CopyFromHost<float>(biasValues.ToArray());
        }

        DeviceTensor ids = _biasIds ?? _chosen, values = _biasValues ?? _logProbs; // unread when no row has bias entries
        DeviceTensor history = _history ?? _chosen, generated = _generated ?? _chosen; // unread when no row has a slot
        var kernel = _device.Kernel(static a => a.LoadKernel<ArrayView<float>, ArrayView<float>, ArrayView<SamplingRow>, ArrayView<int>, ArrayView<int>, ArrayView<int>, ArrayView<float>, ArrayView<int>, ArrayView<float>, int, int>(SamplingKernels.Sample));
        int group = GroupSize(_device);
        var config = new KernelConfig(Math.Max(1, Math.Min(n, _device.GroupCount)), group, SharedMemoryConfig.RequestDynamic<int>(SamplingKernels.SharedInts(group)));
        kernel(_device.Stream, config, logits.View<float>(), _work.Rows(0, n).View<float>(), _parameters.View<byte>().Cast<SamplingRow>().SubView(0, n),
            history.View<int>(), generated.View<int>(), ids.View<int>(), values.View<float>(), _chosen.View<int>(), _logProbs.View<float>(), n, _vocab);
        return (_chosen.Rows(0, n).ToHost<int>(), _logProbs.Rows(0, n).ToHost<float>());
    }

    // A power of two (the group trees halve): 256 on a GPU, the warp on the CPU accelerator.
    private static int GroupSize(Device device)
    {
        int size = 1;
        while (size * 2 <= Math.Min(256, device.Accelerator.MaxNumThreadsPerGroup) && size * 2 <= Math.Max(device.GroupSize, device.Accelerator.WarpSize))
        {
            size *= 2;
        }

        return size;
    }

    /// <summary>The processed logits of the last call's rows (filtered ones −∞), for tests of the kept sets.</summary>
    internal float[] ProcessedRow(int row) => _work.Rows(row, 1).ToHost<float>();

    public void Dispose()
    {
        _work.Dispose();
        _parameters.Dispose();
        _chosen.Dispose();
        _logProbs.Dispose();
        _history?.Dispose();
        _generated?.Dispose();
        _biasIds?.Dispose();
        _biasValues?.Dispose();
    }
}
