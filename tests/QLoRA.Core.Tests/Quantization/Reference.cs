namespace QLoRA.Core.Tests.Quantization;

/// <summary>
/// Plain reference implementations of the formats, written from DESIGN.md §3 independently of the library:
/// linear scans instead of trees, no vectors, no parallelism; tie decisions in double.
/// </summary>
internal static class Reference
{
    public static readonly double[] Nf4 =
    [
        -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
        -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
        0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
        0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
    ];

    // FP4 value of each 4-bit pattern, times 12.
    public static readonly double[] Fp4Times12 = [0, 0.0625, 8, 12, 4, 6, 2, 3, -0.0, -0.0625, -8, -12, -4, -6, -2, -3];

    // The magnitude pivots of bitsandbytes' dQuantizeFP4, as its source spells them.
    public static readonly float[] Fp4Pivots = [0.00260417f, 0.0859375f, 0.20833333f, 0.29166667f, 0.4166667f, 0.583333f, 0.8333333f];

    public static float CodeValue(QuantType type, int code) =>
        type == QuantType.Nf4 ? (float)Nf4[code] : (float)Fp4Times12[code] / 12f;

    // bitsandbytes' pivots are the shortest decimals of the double midpoints, parsed once to float32.
    public static float[] Nf4Midpoints() =>
        Enumerable.Range(0, 15).Select(i => float.Parse(((Nf4[i] + Nf4[i + 1]) / 2.0).ToString("R", System.Globalization.CultureInfo.InvariantCulture), System.Globalization.CultureInfo.InvariantCulture)).ToArray();

    public static int QuantizeNf4(float scaled)
    {
        float[] mid = Nf4Midpoints();
        int code = 0;
        for (int i = 0; i < mid.Length; i++)
        {
            if (scaled > mid[i])
            {
                code = i + 1;
            }
        }

        return code;
    }

    public static int QuantizeFp4(float scaled)
    {
        int sign = scaled < 0 ? 8 : 0;
        float magnitude = Math.Abs(scaled);
        int bucket = Fp4Pivots.Count(p => magnitude > p);
        // Magnitudes ascending: 0, 0.0625, 2, 3, 4, 6, 8, 12 have patterns 0, 1, 6, 7, 4, 5, 2, 3.
        int[] patterns = [0, 1, 6, 7, 4, 5, 2, 3];
        return patterns[bucket] | sign;
    }

    public static int Quantize(QuantType type, float scaled) => type == QuantType.Nf4 ? QuantizeNf4(scaled) : QuantizeFp4(scaled);

    public static int ZeroCode(QuantType type) => type == QuantType.Nf4 ? 7 : 0;

    /// <summary>Codes (one per value) and absmax, by the letter of the format.</summary>
    public static (int[] Codes, float[] Absmax) QuantizeCodes(float[] values, int blockSize, QuantType type)
    {
        int blocks = (values.Length + blockSize - 1) / blockSize;
        var codes = new int[values.Length];
        var absmax = new float[blocks];
        for (int b = 0; b < blocks; b++)
        {
            int start = b * blockSize;
            int end = Math.Min(values.Length, start + blockSize);
            float max = 0;
            for (int i = start; i < end; i++)
            {
                max = Math.Max(max, Math.Abs(values[i]));
            }

            absmax[b] = max;
            float inverse = 1f / max;
            for (int i = start; i < end; i++)
            {
                codes[i] = max == 0 ? ZeroCode(type) : Quantize(type, values[i] * inverse);
            }
        }

        return (codes, absmax);
    }

    public static byte[] Pack(int[] codes, QuantType type)
    {
        var packed = new byte[(codes.Length + 1) / 2];
        for (int i = 0; i < codes.Length; i++)
        {
            if (i % 2 == 0)
            {
                packed[i / 2] = (byte)(codes[i] << 4 | (i + 1 < codes.Length ? 0 : ZeroCode(type)));
            }
            else
            {
                packed[i / 2] |= (byte)codes[i];
            }
        }

        return packed;
    }

    public static float[] Dequantize(byte[] packed, float[] absmax, int count, int blockSize, QuantType type)
    {
        var result = new float[count];
        for (int i = 0; i < count; i++)
        {
            int code = i % 2 == 0 ? packed[i / 2] >> 4 : packed[i / 2] & 15;
            result[i] = CodeValue(type, code) * absmax[i / blockSize];
        }

        return result;
    }

    /// <summary>bf16 bits of x by round-to-nearest-even, decided in double.</summary>
    public static ushort Bf16(float x)
    {
        uint bits = BitConverter.SingleToUInt32Bits(x);
        ushort down = (ushort)(bits >> 16);
        ushort up = (ushort)(down + 1);
        double lo = BitConverter.UInt32BitsToSingle((uint)down << 16);
        double hi = (up & 0x7FFF) == 0x7F80
            ? Math.CopySign(Math.Pow(2, 128), x) // the next step past the largest finite bf16 is where infinity "sits"
            : BitConverter.UInt32BitsToSingle((uint)up << 16);
        double dx = Math.Abs(x - lo);
        double dy = Math.Abs(hi - x);
        if (dx < dy)
        {
            return down;
        }

        if (dy < dx)
        {
            return up;
        }

        return (down & 1) == 0 ? down : up;
    }

    /// <summary>The signed dynamic map from DESIGN.md §3, in double.</summary>
    public static double[] DynamicMapDouble()
    {
        var values = new List<double> { 0, 1.0 };
        for (int i = 0; i < 7; i++)
        {
            int n = (1 << i) + 1;
            for (int j = 0; j < n - 1; j++)
            {
                double a = 0.1 + (0.9 * j / (n - 1));
                double b = 0.1 + (0.9 * (j + 1) / (n - 1));
                double mean = (a + b) / 2 * Math.Pow(10, i - 6);
                values.Add(mean);
                values.Add(-mean);
            }
        }

        values.Sort();
        return [.. values];
    }

    /// <summary>bitsandbytes' CUDA dQuantize (non-stochastic), transcribed step by step.</summary>
    public static int BnbDQuantize(float[] code, float x)
    {
        int pivot = 127, upperPivot = 255, lowerPivot = 0;
        float lower = -1f, upper = 1f;
        float val = code[pivot];
        for (int i = 64; i > 0; i >>= 1)
        {
            if (x > val)
            {
                lowerPivot = pivot;
                lower = val;
                pivot += i;
            }
            else
            {
                upperPivot = pivot;
                upper = val;
                pivot -= i;
            }

            val = code[pivot];
        }

        if (upperPivot == 255)
        {
            upper = code[upperPivot];
        }

        if (lowerPivot == 0)
        {
            lower = code[lowerPivot];
        }

        if (x > val)
        {
            float midpoint = (upper + val) * 0.5f;
            return x > midpoint ? upperPivot : pivot;
        }
        else
        {
            float midpoint = (lower + val) * 0.5f;
            return x < midpoint ? lowerPivot : pivot;
        }
    }
}
