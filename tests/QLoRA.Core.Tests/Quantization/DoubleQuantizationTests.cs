namespace QLoRA.Core.Tests.Quantization;

public class DoubleQuantizationTests
{
    [Fact]
    public void SignedDynamicMapFollowsTheDesignFormula()
    {
        ReadOnlySpan<float> map = DynamicMap.Signed;
        double[] expected = Reference.DynamicMapDouble();
        Assert.Equal(256, map.Length);
        for (int i = 0; i < 256; i++)
        {
            Assert.True(Math.Abs(map[i] - expected[i]) <= Math.Abs(expected[i]) * 1e-6, $"entry {i}: {map[i]} vs {expected[i]}");
            if (i > 0)
            {
                Assert.True(map[i] > map[i - 1], $"map must be strictly ascending at {i}");
            }
        }

        Assert.Equal(-0.99296875f, map[0]);
        Assert.Equal(0f, map[127]);
        Assert.Equal(127, DynamicMap.SignedZeroCode);
        Assert.Equal(0.99296875f, map[254]);
        Assert.Equal(1f, map[255]);
        Assert.Equal(5.5e-7f, map[128], 1e-12f);
    }

    [Fact]
    public void UnsignedDynamicMapFollowsBitsandbytesFormula()
    {
        // create_dynamic_map(signed=False): 2^(i+1) midpoints of linspace(0.1, 1, 2^(i+1) + 1) × 10^(i−6), i = 0..6, plus 0 and 1.
        var expected = new List<double> { 0, 1 };
        for (int i = 0; i < 7; i++)
        {
            int n = 1 << (i + 1);
            for (int j = 0; j < n; j++)
            {
                double lo = 0.1 + (0.9 * j / n), hi = 0.1 + (0.9 * (j + 1) / n);
                expected.Add((lo + hi) / 2 * Math.Pow(10, i - 6));
            }
        }

        expected.Sort();
        ReadOnlySpan<float> map = DynamicMap.Unsigned;
        Assert.Equal(256, expected.Count);
        Assert.Equal(256, map.Length);
        for (int i = 0; i < 256; i++)
        {
            Assert.True(Math.Abs(map[i] - expected[i]) <= Math.Abs(expected[i]) * 1e-6, $"entry {i}: {map[i]} vs {expected[i]}");
            Assert.True(i == 0 || map[i] > map[i - 1], $"map must be strictly ascending at {i}");
        }

        Assert.Equal(0f, map[0]);
        Assert.Equal(3.25e-7f, map[1], 1e-13f);
        Assert.Equal(1f, map[255]);
    }

    [Fact]
    public void EightBitSearchPicksANearestCode()
    {
        ReadOnlySpan<float> map = DynamicMap.Signed;
        var rng = new Random(4);
        for (int t = 0; t < 200_000; t++)
        {
            float x = (float)((rng.NextDouble() * 2) - 1);
            if (t % 4 == 0)
            {
                x *= (float)Math.Pow(10, -rng.Next(0, 7)); // exercise the small-magnitude decades
            }

            int q = DynamicMap.Quantize(map, x);
            double best = double.MaxValue;
            foreach (float c in map)
            {
                best = Math.Min(best, Math.Abs((double)c - x));
            }

            double got = Math.Abs((double)map[q] - x);
            Assert.True(got <= best + (Math.Abs(x) * 1.2e-7) + 1e-12, $"x={x}: code {q} ({map[q]}) is {got} away, nearest is {best}");
        }

        Assert.Equal(255, DynamicMap.Quantize(map, 1f));
        Assert.Equal(0, DynamicMap.Quantize(map, -1f));
        Assert.Equal(127, DynamicMap.Quantize(map, 0f));
    }

    [Fact]
    public void EightBitSearchIsBitIdenticalToBitsandbytesDQuantize()
    {
        float[] map = DynamicMap.Signed.ToArray();
        var probes = new List<float> { -1.5f, -1f, 0f, -0f, 1f, 1.5f };
        for (int j = 0; j < 256; j++)
        {
            probes.Add(map[j]);
            probes.Add(MathF.BitIncrement(map[j]));
            probes.Add(MathF.BitDecrement(map[j]));
            if (j < 255)
            {
                float mid = (map[j] + map[j + 1]) * 0.5f; // every tie, and both neighbours of it
                probes.Add(mid);
                probes.Add(MathF.BitIncrement(mid));
                probes.Add(MathF.BitDecrement(mid));
            }
        }

        var rng = new Random(17);
        for (int t = 0; t < 300_000; t++)
        {
            float x = (float)((rng.NextDouble() * 2) - 1);
            probes.Add(t % 3 == 0 ? x * (float)Math.Pow(10, -rng.Next(0, 8)) : x);
        }

        foreach (float x in probes)
        {
            Assert.Equal(Reference.BnbDQuantize(map, x), DynamicMap.Quantize(map, x));
        }
    }

    [Fact]
    public void CompressCodesEveryAbsmaxExactlyAsBitsandbytesWould()
    {
        // Exercises the vectorized (gather) search through Compress, against the transcribed dQuantize.
        float[] absmax = TestSupport.Normal(5000, seed: 44).Select(v => Math.Abs(v) * 0.03f).ToArray();
        absmax[17] = 0f;
        DoubleQuantizedAbsmax dq = DoubleQuantization.Compress(absmax);
        float[] map = DynamicMap.Signed.ToArray();
        for (int i = 0; i < absmax.Length; i++)
        {
            float nested = dq.NestedAbsmax[i / 256];
            float expectedMax = 0;
            for (int j = (i / 256) * 256; j < Math.Min(absmax.Length, ((i / 256) + 1) * 256); j++)
            {
                expectedMax = Math.Max(expectedMax, Math.Abs(absmax[j] - dq.Offset));
            }

            Assert.Equal(expectedMax, nested);
            Assert.Equal(Reference.BnbDQuantize(map, (absmax[i] - dq.Offset) * (1f / nested)), dq.Codes[i]);
        }
    }

    [Fact]
    public unsafe void VectorSearchMatchesDQuantizeOnEveryMidpointAndNeighbour()
    {
        // The gather path Compress uses, fed exact ties: every midpoint, its neighbours and every code value.
        float[] map = DynamicMap.Signed.ToArray();
        var probes = new List<float>();
        for (int j = 0; j < 255; j++)
        {
            float mid = (map[j] + map[j + 1]) * 0.5f;
            probes.AddRange([mid, MathF.BitIncrement(mid), MathF.BitDecrement(mid), map[j]]);
        }

        probes.AddRange([1f, -1f, 0f]);
        float[] source = [.. probes];
        var codes = new byte[source.Length];
        fixed (float* src = source)
        fixed (byte* dst = codes)
        {
            DynamicMap.SignedSearcher.Quantize(src, source.Length, 0f, 1f, dst);
        }

        for (int i = 0; i < source.Length; i++)
        {
            Assert.True(Reference.BnbDQuantize(map, source[i]) == codes[i], $"x={source[i]:R}: {codes[i]} vs dQuantize {Reference.BnbDQuantize(map, source[i])}");
        }
    }

    [Fact]
    public void CompressedAbsmaxDecodesWithinTheMapsResolution()
    {
        float[] absmax = TestSupport.Normal(1000, seed: 8).Select(v => Math.Abs(v) * 0.05f + 0.001f).ToArray();
        DoubleQuantizedAbsmax dq = DoubleQuantization.Compress(absmax);
        double mean = absmax.Average(a => (double)a);
        Assert.Equal((float)mean, dq.Offset);
        Assert.Equal(4, dq.NestedAbsmax.Length);
        Assert.Equal(256, dq.NestedBlockSize);
        float[] decoded = dq.Decode();
        double[] map = DynamicMap.Signed.ToArray().Select(v => (double)v).ToArray();
        for (int i = 0; i < absmax.Length; i++)
        {
            double nested = dq.NestedAbsmax[i / 256];
            double scaled = (absmax[i] - dq.Offset) / nested;
            // Half the gap of the two map entries around the scaled value bounds the rounding error.
            int upper = Array.FindIndex(map, c => c >= scaled);
            double halfGap = upper <= 0 ? 0 : (map[upper] - map[upper - 1]) / 2;
            double bound = (nested * (halfGap + 1e-6)) + 1e-7;
            Assert.True(Math.Abs(decoded[i] - absmax[i]) <= bound, $"block {i}: {decoded[i]} vs {absmax[i]}, bound {bound}");
        }
    }

    [Fact]
    public void DecodeIsExactlyCodeTimesNestedAbsmaxPlusOffsetInFloat32()
    {
        float[] absmax = TestSupport.Normal(700, seed: 2).Select(v => Math.Abs(v) + 0.5f).ToArray();
        DoubleQuantizedAbsmax dq = DoubleQuantization.Compress(absmax);
        float[] decoded = dq.Decode();
        for (int i = 0; i < absmax.Length; i++)
        {
            float product = dq.NestedCode[dq.Codes[i]] * dq.NestedAbsmax[i / 256];
            Assert.Equal(product + dq.Offset, decoded[i]);
        }
    }

    [Fact]
    public void AllEqualAbsmaxCompressesToTheZeroCode()
    {
        float[] absmax = Enumerable.Repeat(0.25f, 300).ToArray();
        DoubleQuantizedAbsmax dq = DoubleQuantization.Compress(absmax);
        Assert.All(dq.Codes, c => Assert.Equal(127, c));
        Assert.All(dq.NestedAbsmax, n => Assert.Equal(0f, n));
        Assert.All(dq.Decode(), a => Assert.Equal(0.25f, a));
    }

    [Fact]
    public void QuantStateReportsBitsPerParameter()
    {
        float[] weights = TestSupport.Normal(64 * 256 * 4, seed: 12);
        var plain = QuantizedTensor.Quantize(weights, [256, 256], new QuantizationOptions(DoubleQuant: false));
        var nested = QuantizedTensor.Quantize(weights, [256, 256], new QuantizationOptions());
        Assert.Equal(4.5, plain.State.BitsPerParameter, 6);
        // 4 + 8/64 + 32/(64·256), plus the 256-entry map and the offset, amortized over 65536 values.
        double expected = 4 + (8.0 / 64) + (32.0 / (64 * 256)) + ((256 * 4 + 4) * 8.0 / 65536);
        Assert.Equal(expected, nested.State.BitsPerParameter, 6);
    }

    [Fact]
    public void NonFiniteAbsmaxIsRejected()
    {
        Assert.Throws<ArgumentException>(() => DoubleQuantization.Compress([1f, float.NaN]));
        Assert.Throws<ArgumentException>(() => DoubleQuantization.Compress([]));
    }
}
