using QLoRA.Core;
using QLoRA.Core.Weights;
using QLoRA.Runtime.Ops;
using QLoRA.Runtime.Tensors;
using Device = QLoRA.Runtime.Devices.Device;

namespace QLoRA.Runtime.Layers;

/// <summary>Token embedding table [vocab, dim] (frozen), looked up by id.</summary>
public sealed class EmbeddingLayer : IDisposable
{
    private EmbeddingLayer(DeviceTensor table)
    {
        Table = table;
        VocabSize = checked((int)table.Shape[0]);
        Dim = checked((int)table.Shape[1]);
    }

    /// <summary>The table [vocab, dim].</summary>
    public DeviceTensor Table { get; }

    /// <summary>Rows of the table.</summary>
    public int VocabSize { get; }

    /// <summary>Width.</summary>
    public int Dim { get; }

    /// <summary>Loads checkpoint weight <paramref name="name"/> [vocab, dim], stored in <see cref="Device.ComputeDtype"/>.</summary>
    /// <exception cref="CheckpointFormatException">Missing, not float, or of another shape (both shapes named).</exception>
    public static EmbeddingLayer Load(Device device, IWeightSource source, string name, int vocab, int dim)
    {
        source.Require(name, vocab, dim);
        return new EmbeddingLayer(DeviceTensor.FromSingle(device, source.ReadSingle(name), device.ComputeDtype, vocab, dim));
    }

    /// <summary>y[t] = table[ids[t]].</summary>
    public void Forward(ReadOnlySpan<int> ids, DeviceTensor y) => Elementwise.Embedding(Table, ids, y);

    /// <summary>
    /// dTable[ids[t]] += dy[t] for every token (when the embedding is trained, e.g. PEFT's modules_to_save),
    /// deterministic: tokens grouped by id, each row summed in token order.
    /// </summary>
    /// <param name="ids">The forward's token ids.</param>
    /// <param name="dy">[tokens, dim] of the compute dtype.</param>
    /// <param name="dTable">F32 [vocab, dim], accumulated into.</param>
    /// <exception cref="ArgumentOutOfRangeException">An id is outside the vocabulary.</exception>
    public void Backward(ReadOnlySpan<int> ids, DeviceTensor dy, DeviceTensor dTable) => Elementwise.EmbeddingBackward(dy, ids, dTable);

    /// <summary>Frees the table.</summary>
    public void Dispose() => Table.Dispose();
}
