using QLoRA.Core;
using QLoRA.Runtime.Tensors;

namespace QLoRA.Runtime.Ops;

/// <summary>Argument checks shared by the ops: dtype and shape, with both shapes in the message.</summary>
internal static class Shapes
{
    public static void Require(DeviceTensor tensor, DType dtype, IReadOnlyList<long> shape, string name)
    {
        if (tensor.Dtype != dtype)
        {
            throw new ArgumentException($"{name} is {tensor.Dtype}; {dtype} is required.", name);
        }

        if (!tensor.Shape.SequenceEqual(shape))
        {
            throw new ArgumentException($"{name} has shape [{string.Join(", ", tensor.Shape)}]; [{string.Join(", ", shape)}] is required.", name);
        }
    }
}
