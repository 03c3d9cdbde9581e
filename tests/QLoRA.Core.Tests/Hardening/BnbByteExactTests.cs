using QLoRA.Core.BitsAndBytes;
using QLoRA.Core.SafeTensors;

namespace QLoRA.Core.Tests.Hardening;

/// <summary>Bytes as bitsandbytes writes and reads them: FP4's stored map, and all-zero NF4 blocks from its CUDA path.</summary>
public sealed class BnbByteExactTests
{
    [Fact]
    public void Fp4_quant_map_entry_8_is_stored_as_positive_zero()
    {
        var t = QuantizedTensor.Quantize(TestSupport.Normal(128, seed: 2), [2, 64], new QuantizationOptions(QuantType.Fp4, 64, false));
        var map = BnbFourBitTensor.Entries("w", t).Single(e => e.Spec.Name == "w.quant_map").Data.ToArray();
        // bitsandbytes' table holds the Python integer -0, which torch stores as +0.0: four zero bytes.
        Assert.Equal(new byte[4], map[32..36]);
        // Every other entry is the FP4 code, bit for bit.
        var codes = FourBitCodes.Values(QuantType.Fp4);
        for (int i = 0; i < 16; i++)
            if (i != 8) Assert.Equal(BitConverter.SingleToInt32Bits(codes[i]), BitConverter.ToInt32(map, 4 * i));
        // The decoder's own table keeps -0.0 for code 8 (its sign bit), as bitsandbytes' kernels decode it.
        Assert.Equal(unchecked((int)0x80000000), BitConverter.SingleToInt32Bits(codes[8]));
    }

    [Fact]
    public void Our_zero_blocks_are_0x77_and_decode_to_positive_zero()
    {
        var data = new float[128];
        TestSupport.Normal(64, seed: 3).CopyTo(data, 64);   // block 0 all zeros, block 1 random
        var t = QuantizedTensor.Quantize(data, [128], new QuantizationOptions(QuantType.Nf4, 64, false));
        Assert.All(t.Packed.Span[..32].ToArray(), b => Assert.Equal(0x77, b));
        var back = new float[128];
        t.Dequantize(back);
        Assert.All(back[..64], v => Assert.Equal(0, BitConverter.SingleToInt32Bits(v)));
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Zero_blocks_written_as_0x00_by_bitsandbytes_cuda_decode_as_bitsandbytes_decodes_them(bool doubleQuant)
    {
        // bitsandbytes' CUDA kernel computes 0 · (1/0) = NaN for an all-zero block, which its decision tree maps to
        // code 0 (-1.0): the block is stored as 0x00 bytes with absmax 0. Decoding is code × absmax, so plain absmax
        // gives -0.0 and a double-quantized absmax gives −(dequantized absmax), exactly as bitsandbytes returns.
        float[] real = TestSupport.Normal(64 * 7, seed: 4, scale: 0.05);
        var data = new float[64 * 8];
        real.CopyTo(data, 64);
        var t = QuantizedTensor.Quantize(data, [data.Length], new QuantizationOptions(QuantType.Nf4, 64, doubleQuant));
        byte[] packed = t.Packed.ToArray();
        Array.Clear(packed, 0, 32);   // block 0 as the CUDA kernel writes it
        string path = Path.Combine(TestSupport.TempDir(), "cuda-zero.safetensors");
        SafeTensorsWriter.Save(path, BnbFourBitTensor.Entries("w", new QuantizedTensor(packed, t.State)));
        using var file = SafeTensorsFile.Open(path);
        var read = BnbFourBitTensor.Read(file, "w");
        var f32 = new float[data.Length];
        read.Dequantize(f32);
        var bf16 = new BFloat16[data.Length];
        read.Dequantize(bf16);
        float absmax0 = read.State.Absmax.Decode()[0];
        if (!doubleQuant) Assert.Equal(0f, absmax0);
        for (int i = 0; i < 64; i++)
        {
            float expected = -1.0f * absmax0;   // NF4 code 0 is -1.0
            Assert.Equal(BitConverter.SingleToInt32Bits(expected), BitConverter.SingleToInt32Bits(f32[i]));
            Assert.Equal(BFloat16.FromSingle(expected).Bits, bf16[i].Bits);
        }
        if (!doubleQuant) Assert.Equal(unchecked((int)0x80000000), BitConverter.SingleToInt32Bits(f32[0]));
        else Assert.True(f32[0] < 0);   // the nested code of a zero absmax is not exactly zero after double quantization
    }
}
