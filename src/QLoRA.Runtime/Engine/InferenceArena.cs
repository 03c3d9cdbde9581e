using QLoRA.Core;
using QLoRA.Runtime.Ops;
using QLoRA.Runtime.Tensors;
using Device = QLoRA.Runtime.Devices.Device;

namespace QLoRA.Runtime.Engine;

/// <summary>
/// A forward pass without a backward: one activation set reused by every block (nothing is kept for gradients), the
/// residual stream updated in place, planned once for a token budget like the training arena.
/// </summary>
internal sealed class InferenceArena : IDisposable
{
    private readonly Device _device;
    private readonly EngineModel _model;
    private readonly EngineShape _shape;
    private readonly ActivationArena _arena;
    private readonly ActivationArena.Slot _x, _y, _finalNormed, _finalInverseRms, _positions;
    private readonly BlockActivations _block;
    private readonly BlockScratch _scratch;
    private readonly DeviceTensor _inverseFrequencies;

    public InferenceArena(Device device, EngineModel model, int tokens)
    {
        _device = device;
        _model = model;
        _shape = EngineShape.Of(model.Config, tokens, model.Embed.Table.Dtype);
        var layout = new ActivationArena.Layout();
        _x = layout.Add(_shape.ComputeDtype, tokens, _shape.Hidden);
        _y = layout.Add(_shape.ComputeDtype, tokens, _shape.Hidden);
        _block = new BlockActivations(layout, _shape);
        _scratch = new BlockScratch(layout, _shape);
        _finalNormed = layout.Add(_shape.ComputeDtype, tokens, _shape.Hidden);
        _finalInverseRms = layout.Add(DType.F32, tokens);
        _positions = layout.Add(DType.I32, tokens);
        _arena = ActivationArena.Allocate(device, layout);
        _inverseFrequencies = DeviceTensor.FromHost<float>(device, RopeFrequencies.Compute(model.Config.Rope, model.Config.HeadDim), DType.F32, model.Config.HeadDim / 2);
    }

    public float[] Logits(ReadOnlySpan<int> ids)
    {
        int t = ids.Length;
        var boundaries = new[] { 0, t };
        _positions.Tensor.Rows(0, t).CopyFromHost<int>([.. Enumerable.Range(0, t)]);
        var context = new BatchContext(t, boundaries, _positions.Tensor.Rows(0, t), _inverseFrequencies, _model.Config.SlidingWindow ?? 0, Training: false);
        DeviceTensor x = _x.Tensor.Rows(0, t), y = _y.Tensor.Rows(0, t);
        _model.Embed.Forward(ids, x);
        foreach (DecoderBlockWeights block in _model.Blocks)
        {
            DecoderBlock.Forward(block, _shape, context, _block, _scratch, x, y);
            (x, y) = (y, x);
        }

        DeviceTensor normed = _finalNormed.Tensor.Rows(0, t);
        _model.Norm.Forward(x, normed, _finalInverseRms.Tensor.Rows(0, t));
        using DeviceTensor logits = DeviceTensor.Allocate(_device, DType.F32, t, _model.Config.VocabSize);
        Gemm.Multiply(normed, _model.LmHead, logits, transposeB: true);
        return logits.ToHost<float>();
    }

    public void Dispose()
    {
        _arena.Dispose();
        _inverseFrequencies.Dispose();
    }
}
