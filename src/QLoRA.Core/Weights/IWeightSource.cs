using QLoRA.Core.Quantization;

namespace QLoRA.Core.Weights;

/// <summary>What a weight source holds under a checkpoint name.</summary>
/// <param name="Name">Checkpoint name (e.g. <c>model.layers.0.self_attn.q_proj.weight</c>).</param>
/// <param name="Dtype">Stored dtype, or for 4-bit tensors the dtype they dequantize to.</param>
/// <param name="Shape">Logical (unpacked) shape.</param>
/// <param name="QuantType">NF4/FP4 when stored in the bitsandbytes 4-bit layout, else null.</param>
public sealed record WeightInfo(string Name, DType Dtype, IReadOnlyList<long> Shape, QuantType? QuantType)
{
    /// <summary>Shape as text.</summary>
    public string ShapeText => $"[{string.Join(", ", Shape)}]";
}

/// <summary>Tensors by checkpoint name — dense or 4-bit — for building layers; implementations validate what they return.</summary>
public interface IWeightSource : IDisposable
{
    /// <summary>Where the weights come from (named in errors).</summary>
    string Location { get; }

    /// <summary>The tensor's dtype and logical shape, or null when absent.</summary>
    WeightInfo? Describe(string name);

    /// <summary>A 4-bit tensor (bitsandbytes layout).</summary>
    /// <exception cref="CheckpointFormatException">Absent, not 4-bit, or malformed.</exception>
    QuantizedTensor ReadQuantized(string name);

    /// <summary>A dense tensor widened to float32.</summary>
    /// <exception cref="CheckpointFormatException">Absent, 4-bit, or not a float dtype.</exception>
    float[] ReadSingle(string name);
}

/// <summary>Shape checks that name the tensor and both shapes.</summary>
public static class WeightSourceExtensions
{
    /// <summary>Describes <paramref name="name"/> and checks its logical shape.</summary>
    /// <exception cref="CheckpointFormatException">Missing, or the shape differs (both shapes named).</exception>
    public static WeightInfo Require(this IWeightSource source, string name, params long[] shape)
    {
        WeightInfo info = source.Describe(name) ?? throw new CheckpointFormatException(source.Location, name, "missing from the weights");
        if (!info.Shape.SequenceEqual(shape))
        {
            throw new CheckpointFormatException(source.Location, name, $"has shape {info.ShapeText} but the model expects [{string.Join(", ", shape)}]");
        }

        return info;
    }
}
