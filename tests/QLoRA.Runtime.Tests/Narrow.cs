using QLoRA.Core;

namespace QLoRA.Runtime.Tests;

/// <summary>
/// Test-side rounding to the narrow compute dtypes, written independently of the kernels: f16 through System.Half,
/// bf16 by rounding the value to 8 significant bits in float64 arithmetic.
/// </summary>
internal static class Narrow
{
    /// <summary>Unit roundoff (half an ulp at 1, relative) of each compute dtype.</summary>
    public static double UnitRoundoff(DType dtype) => dtype switch
    {
        DType.BF16 => Math.ScaleB(1, -8),
        DType.F16 => Math.ScaleB(1, -11),
        _ => Math.ScaleB(1, -24),
    };

    /// <summary>x rounded to nearest even in <paramref name="dtype"/>.</summary>
    public static float Round(float x, DType dtype) => dtype switch
    {
        DType.F16 => (float)(Half)x,
        DType.BF16 => RoundBf16(x),
        _ => x,
    };

    public static float[] Round(float[] values, DType dtype) => [.. values.Select(v => Round(v, dtype))];

    /// <summary>Random values in ±scale, already representable in <paramref name="dtype"/>.</summary>
    public static float[] Random(int count, int seed, DType dtype, double scale = 1)
    {
        var rng = new Random(seed);
        return [.. Enumerable.Range(0, count).Select(_ => Round((float)(((rng.NextDouble() * 2) - 1) * scale), dtype))];
    }

    private static float RoundBf16(float x)
    {
        if (x == 0 || !float.IsFinite(x))
        {
            return float.IsNaN(x) ? float.NaN : x;
        }

        // 8 significant bits (128 ≤ |significand| < 256); below 2⁻¹²⁶ the quantum stays 2⁻¹³³ (subnormals).
        int exponent = Math.Max(Math.ILogB((double)x), -126);
        double significand = Math.ScaleB((double)x, 7 - exponent);
        return (float)Math.ScaleB(Math.Round(significand, MidpointRounding.ToEven), exponent - 7);
    }
}
