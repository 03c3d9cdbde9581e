using CsCheck;
using QLoRA.Core.BitsAndBytes;
using QLoRA.Core.SafeTensors;

namespace QLoRA.Core.Tests.Quantization;

public class QuantizationPropertyTests
{
    private static readonly Gen<(int BlockSize, int Length, int Seed, QuantType Type)> Cases =
        Gen.Select(Gen.Int[0, 7], Gen.Int[1, 9000], Gen.Int, Gen.Int[0, 1])
            .Select((b, n, seed, t) => (TestSupport.AllBlockSizes[b], n, seed, (QuantType)t));

    private static double LargestHalfGap(QuantType type)
    {
        float[] sorted = FourBitCodes.Values(type).ToArray().Order().ToArray();
        double gap = 0;
        for (int i = 1; i < sorted.Length; i++)
        {
            gap = Math.Max(gap, sorted[i] - sorted[i - 1]);
        }

        return gap / 2;
    }

    [Fact]
    public void DequantizedErrorIsAtMostHalfTheLargestCodeGapTimesAbsmax()
    {
        Cases.Sample((blockSize, n, seed, type) =>
        {
            float[] values = TestSupport.Normal(n, seed, scale: 0.02);
            var tensor = QuantizedTensor.Quantize(values, [n], new QuantizationOptions(type, blockSize, DoubleQuant: false));
            float[] absmax = tensor.State.Absmax.Decode();
            float[] back = tensor.DequantizeToSingle();
            // FP4's bitsandbytes pivots sit a few ulps off the midpoints: allow 1e-6 relative slack.
            double halfGap = LargestHalfGap(type) + 1e-6;
            for (int i = 0; i < n; i++)
            {
                Assert.True(Math.Abs(back[i] - values[i]) <= (halfGap * absmax[i / blockSize]) + 1e-12, $"n={n} bs={blockSize} i={i}");
            }

            // Every code is in range and the pad nibble of an odd length is the zero code.
            if (n % 2 == 1)
            {
                Assert.Equal(FourBitCodes.ZeroCode(type), tensor.Packed.Span[^1] & 15);
            }
        }, iter: 60);
    }

    [Fact]
    public void DoubleQuantizedAbsmaxStaysWithinTheDynamicMapsResolution()
    {
        Cases.Sample((blockSize, n, seed, type) =>
        {
            float[] values = TestSupport.Normal(n * 8, seed, scale: 0.1);
            var plain = QuantizedTensor.Quantize(values, [n * 8], new QuantizationOptions(type, Math.Min(blockSize, 256), DoubleQuant: false));
            var nested = QuantizedTensor.Quantize(values, [n * 8], new QuantizationOptions(type, Math.Min(blockSize, 256), DoubleQuant: true));
            Assert.Equal(plain.Packed.ToArray(), nested.Packed.ToArray());
            float[] exact = plain.State.Absmax.Decode();
            var dq = (DoubleQuantizedAbsmax)nested.State.Absmax;
            float[] decoded = dq.Decode();
            for (int i = 0; i < exact.Length; i++)
            {
                // The map's coarsest step is 1/64 of the range near ±1: half of it bounds the error.
                double bound = (dq.NestedAbsmax[i / 256] * ((0.9 / 64 / 2) + 1e-6)) + 1e-7;
                Assert.True(Math.Abs(decoded[i] - exact[i]) <= bound, $"block {i}: {decoded[i]} vs {exact[i]}");
            }
        }, iter: 40);
    }

    [Fact]
    public void RoundTripThroughABitsandbytesFileIsBitIdentical()
    {
        string dir = TestSupport.TempDir();
        Cases.Sample((blockSize, n, seed, type) =>
        {
            bool doubleQuant = seed % 2 == 0;
            BFloat16[] values = TestSupport.ToBf16(TestSupport.Normal(n, seed, scale: 0.05));
            var tensor = QuantizedTensor.Quantize(values, [1, n], new QuantizationOptions(type, blockSize, doubleQuant));
            string path = Path.Combine(dir, $"{seed}.safetensors");
            SafeTensorsWriter.Save(path, BnbFourBitTensor.Entries("w.weight", tensor));
            using SafeTensorsFile file = SafeTensorsFile.Open(path);
            QuantizedTensor back = BnbFourBitTensor.Read(file, "w.weight");
            Assert.Equal(tensor.Packed.ToArray(), back.Packed.ToArray());
            Assert.Equal(tensor.State.Absmax.Decode(), back.State.Absmax.Decode());
            Assert.Equal(tensor.State.Type, back.State.Type);
            Assert.Equal(tensor.State.BlockSize, back.State.BlockSize);
            Assert.Equal(DType.BF16, back.State.Dtype);
            Assert.Equal([1L, n], back.State.Shape);
            var a = new BFloat16[n];
            var b = new BFloat16[n];
            tensor.Dequantize(a);
            back.Dequantize(b);
            Assert.Equal(a, b);
        }, iter: 30);
        Directory.Delete(dir, true);
    }
}
