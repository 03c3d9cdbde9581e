namespace QLoRA.Core;

/// <summary>Element types of tensors stored in checkpoints (the safetensors dtype set this project reads and writes).</summary>
public enum DType
{
    /// <summary>Boolean, one byte (safetensors <c>BOOL</c>).</summary>
    Bool,
    /// <summary>Unsigned 8-bit integer (<c>U8</c>); also the storage of packed 4-bit weights.</summary>
    U8,
    /// <summary>Signed 8-bit integer (<c>I8</c>).</summary>
    I8,
    /// <summary>Signed 16-bit integer (<c>I16</c>).</summary>
    I16,
    /// <summary>Signed 32-bit integer (<c>I32</c>).</summary>
    I32,
    /// <summary>Signed 64-bit integer (<c>I64</c>).</summary>
    I64,
    /// <summary>IEEE half precision (<c>F16</c>).</summary>
    F16,
    /// <summary>bfloat16 (<c>BF16</c>).</summary>
    BF16,
    /// <summary>IEEE single precision (<c>F32</c>).</summary>
    F32,
    /// <summary>IEEE double precision (<c>F64</c>).</summary>
    F64,
}

/// <summary>Names and sizes of <see cref="DType"/> values as the file formats spell them.</summary>
public static class DTypeInfo
{
    /// <summary>Bytes per element.</summary>
    public static int SizeInBytes(this DType dtype) => dtype switch
    {
        DType.Bool or DType.U8 or DType.I8 => 1,
        DType.I16 or DType.F16 or DType.BF16 => 2,
        DType.I32 or DType.F32 => 4,
        DType.I64 or DType.F64 => 8,
        _ => throw new ArgumentOutOfRangeException(nameof(dtype), dtype, null),
    };

    /// <summary>The safetensors header name (<c>"BF16"</c>, <c>"U8"</c>, …).</summary>
    public static string SafeTensorsName(this DType dtype) => dtype switch
    {
        DType.Bool => "BOOL",
        DType.U8 => "U8",
        DType.I8 => "I8",
        DType.I16 => "I16",
        DType.I32 => "I32",
        DType.I64 => "I64",
        DType.F16 => "F16",
        DType.BF16 => "BF16",
        DType.F32 => "F32",
        DType.F64 => "F64",
        _ => throw new ArgumentOutOfRangeException(nameof(dtype), dtype, null),
    };

    /// <summary>Parses a safetensors dtype name; false for names outside the supported set.</summary>
    public static bool TryParseSafeTensorsName(string name, out DType dtype)
    {
        switch (name)
        {
            case "BOOL": dtype = DType.Bool; return true;
            case "U8": dtype = DType.U8; return true;
            case "I8": dtype = DType.I8; return true;
            case "I16": dtype = DType.I16; return true;
            case "I32": dtype = DType.I32; return true;
            case "I64": dtype = DType.I64; return true;
            case "F16": dtype = DType.F16; return true;
            case "BF16": dtype = DType.BF16; return true;
            case "F32": dtype = DType.F32; return true;
            case "F64": dtype = DType.F64; return true;
            default: dtype = default; return false;
        }
    }

    /// <summary>PyTorch's name without the <c>torch.</c> prefix (<c>"bfloat16"</c>, <c>"float16"</c>, <c>"float32"</c>, …), as bitsandbytes and transformers write it.</summary>
    public static string TorchName(this DType dtype) => dtype switch
    {
        DType.Bool => "bool",
        DType.U8 => "uint8",
        DType.I8 => "int8",
        DType.I16 => "int16",
        DType.I32 => "int32",
        DType.I64 => "int64",
        DType.F16 => "float16",
        DType.BF16 => "bfloat16",
        DType.F32 => "float32",
        DType.F64 => "float64",
        _ => throw new ArgumentOutOfRangeException(nameof(dtype), dtype, null),
    };

    /// <summary>Parses a PyTorch dtype name, with or without the <c>torch.</c> prefix; accepts the aliases <c>half</c>, <c>float</c>, <c>double</c>.</summary>
    public static bool TryParseTorchName(string name, out DType dtype)
    {
        string n = name.StartsWith("torch.", StringComparison.Ordinal) ? name["torch.".Length..] : name;
        switch (n)
        {
            case "bool": dtype = DType.Bool; return true;
            case "uint8": dtype = DType.U8; return true;
            case "int8": dtype = DType.I8; return true;
            case "int16": dtype = DType.I16; return true;
            case "int32": dtype = DType.I32; return true;
            case "int64": dtype = DType.I64; return true;
            case "float16" or "half": dtype = DType.F16; return true;
            case "bfloat16": dtype = DType.BF16; return true;
            case "float32" or "float": dtype = DType.F32; return true;
            case "float64" or "double": dtype = DType.F64; return true;
            default: dtype = default; return false;
        }
    }

    /// <summary>True for F16, BF16 and F32: the dtypes 4-bit quantization reads and writes.</summary>
    public static bool IsQuantizableFloat(this DType dtype) => dtype is DType.F16 or DType.BF16 or DType.F32;
}
