using System.Numerics.Tensors;
using System.Runtime.InteropServices;
using QLoRA.Core.BitsAndBytes;
using QLoRA.Core.Numerics;
using QLoRA.Core.Quantization;
using QLoRA.Core.SafeTensors;

namespace QLoRA.Core.Weights;

/// <summary>A weight source over a safetensors checkpoint (single file, folder or sharded index), dense or bitsandbytes 4-bit.</summary>
public sealed class CheckpointWeightSource : IWeightSource
{
    private readonly SafeTensorsCheckpoint _checkpoint;

    private CheckpointWeightSource(SafeTensorsCheckpoint checkpoint, string location)
    {
        _checkpoint = checkpoint;
        Location = location;
    }

    /// <inheritdoc />
    public string Location { get; }

    /// <summary>Opens a checkpoint (see <see cref="SafeTensorsCheckpoint.Open"/>).</summary>
    public static CheckpointWeightSource Open(string path) => new(SafeTensorsCheckpoint.Open(path), Path.GetFullPath(path));

    /// <summary>The checkpoint's tensor names in file order, 4-bit tensors once under their weight's name (no bitsandbytes auxiliary tensors).</summary>
    public IEnumerable<string> Names => _checkpoint.TensorNames.Where(n => !BnbFourBitTensor.IsAuxiliaryName(n));

    /// <inheritdoc />
    public WeightInfo? Describe(string name)
    {
        if (!_checkpoint.Contains(name))
        {
            return null;
        }

        SafeTensorsFile file = _checkpoint.FileOf(name);
        if (BnbFourBitTensor.IsQuantized(file, name))
        {
            QuantState state = BnbFourBitTensor.Read(file, name).State;
            return new WeightInfo(name, state.Dtype, state.Shape, state.Type);
        }

        SafeTensorInfo info = file.GetInfo(name);
        return new WeightInfo(name, info.Dtype, info.Shape, null);
    }

    /// <inheritdoc />
    public QuantizedTensor ReadQuantized(string name)
    {
        SafeTensorsFile file = _checkpoint.FileOf(name);
        return BnbFourBitTensor.Read(file, name);
    }

    /// <inheritdoc />
    public float[] ReadSingle(string name)
    {
        SafeTensorsFile file = _checkpoint.FileOf(name);
        if (BnbFourBitTensor.IsQuantized(file, name))
        {
            throw new CheckpointFormatException(file.Path, name, "is stored 4-bit; read it with ReadQuantized");
        }

        SafeTensorInfo info = file.GetInfo(name);
        ReadOnlySpan<byte> bytes = file.GetBytes(name);
        var result = new float[info.ElementCount];
        switch (info.Dtype)
        {
            case DType.F32:
                MemoryMarshal.Cast<byte, float>(bytes).CopyTo(result);
                break;
            case DType.BF16:
                BFloat16Conversions.ToSingle(MemoryMarshal.Cast<byte, BFloat16>(bytes), result);
                break;
            case DType.F16:
                TensorPrimitives.ConvertToSingle(MemoryMarshal.Cast<byte, Half>(bytes), result);
                break;
            default:
                throw new CheckpointFormatException(file.Path, name, $"is {info.Dtype}; a float tensor (F32, BF16, F16) is needed");
        }

        return result;
    }

    /// <summary>Unmaps the files.</summary>
    public void Dispose() => _checkpoint.Dispose();
}
