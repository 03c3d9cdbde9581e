namespace QLoRA.Core.Quantization;

/// <summary>The 4-bit data types of bitsandbytes.</summary>
public enum QuantType
{
    /// <summary>4-bit NormalFloat: 16 quantiles of a standard normal, scaled to [-1, 1].</summary>
    Nf4,
    /// <summary>4-bit float (e2m1 with bitsandbytes' bias): sign bit 3, magnitudes {0, 0.0625, 2, 3, 4, 6, 8, 12} / 12.</summary>
    Fp4,
}

/// <summary>Names of <see cref="QuantType"/> as bitsandbytes and transformers spell them.</summary>
public static class QuantTypeNames
{
    /// <summary><c>"nf4"</c> or <c>"fp4"</c>.</summary>
    public static string ToBnbName(this QuantType type) => type switch
    {
        QuantType.Nf4 => "nf4",
        QuantType.Fp4 => "fp4",
        _ => throw new ArgumentOutOfRangeException(nameof(type), type, null),
    };

    /// <summary>Parses <c>"nf4"</c> / <c>"fp4"</c> (case-insensitive).</summary>
    public static bool TryParse(string? name, out QuantType type)
    {
        switch (name?.ToLowerInvariant())
        {
            case "nf4": type = QuantType.Nf4; return true;
            case "fp4": type = QuantType.Fp4; return true;
            default: type = default; return false;
        }
    }
}
