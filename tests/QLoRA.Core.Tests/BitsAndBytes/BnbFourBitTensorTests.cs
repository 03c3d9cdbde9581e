using System.Text;
using QLoRA.Core.BitsAndBytes;
using QLoRA.Core.SafeTensors;

namespace QLoRA.Core.Tests.BitsAndBytes;

public class BnbFourBitTensorTests
{
    private static QuantizedTensor Sample(bool doubleQuant, QuantType type = QuantType.Nf4, long rows = 48, long cols = 64)
    {
        BFloat16[] w = TestSupport.ToBf16(TestSupport.Normal((int)(rows * cols), seed: 21, scale: 0.02));
        return QuantizedTensor.Quantize(w, [rows, cols], new QuantizationOptions(type, 64, doubleQuant));
    }

    [Fact]
    public void DoubleQuantizedLayoutHasTheTransformersKeysDtypesAndShapes()
    {
        QuantizedTensor t = Sample(doubleQuant: true);
        var entries = BnbFourBitTensor.Entries("model.layers.0.self_attn.q_proj.weight", t).ToDictionary(e => e.Spec.Name, e => e.Spec);
        string p = "model.layers.0.self_attn.q_proj.weight";
        Assert.Equal(6, entries.Count);
        Check(entries[p], DType.U8, 1536, 1);
        Check(entries[p + ".absmax"], DType.U8, 48);
        Check(entries[p + ".nested_absmax"], DType.F32, 1);
        Check(entries[p + ".nested_quant_map"], DType.F32, 256);
        Check(entries[p + ".quant_map"], DType.F32, 16);
        Assert.Equal(DType.U8, entries[p + ".quant_state.bitsandbytes__nf4"].Dtype);
    }

    private static void Check(SafeTensorSpec spec, DType dtype, params long[] shape)
    {
        Assert.Equal(dtype, spec.Dtype);
        Assert.Equal(shape, spec.Shape);
    }

    [Fact]
    public void PlainLayoutStoresFloat32AbsmaxAndNoNestedEntries()
    {
        var entries = BnbFourBitTensor.Entries("w.weight", Sample(doubleQuant: false, QuantType.Fp4)).ToDictionary(e => e.Spec.Name, e => e.Spec);
        Assert.Equal(["w.weight", "w.weight.absmax", "w.weight.quant_map", "w.weight.quant_state.bitsandbytes__fp4"], entries.Keys.Order().ToArray());
        Assert.Equal(DType.F32, entries["w.weight.absmax"].Dtype);
    }

    [Fact]
    public void PackedQuantStateIsPythonJsonDumpsByteForByte()
    {
        QuantizedTensor t = Sample(doubleQuant: true);
        var entry = BnbFourBitTensor.Entries("w", t).Single(e => e.Spec.Name == "w.quant_state.bitsandbytes__nf4");
        string json = Encoding.UTF8.GetString(entry.Data.Span);
        float offset = ((DoubleQuantizedAbsmax)t.State.Absmax).Offset;
        // json.dumps({...}) with Python's default separators and repr of the float32 offset widened to double.
        string expected = "{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"bfloat16\", \"shape\": [48, 64], \"nested_blocksize\": 256, \"nested_dtype\": \"float32\", \"nested_offset\": "
            + ((double)offset).ToString("R", System.Globalization.CultureInfo.InvariantCulture) + "}";
        Assert.Equal(expected, json);

        string plain = new BnbQuantStateJson(QuantType.Fp4, 128, DType.F16, [4096, 11008], null, null).ToJson();
        Assert.Equal("{\"quant_type\": \"fp4\", \"blocksize\": 128, \"dtype\": \"float16\", \"shape\": [4096, 11008]}", plain);
    }

    [Theory]
    [InlineData(0.0123, "0.0123")]
    [InlineData(0.012299999594688416, "0.012299999594688416")]
    [InlineData(1e-05, "1e-05")]
    [InlineData(0.0001, "0.0001")]
    [InlineData(1.5e-07, "1.5e-07")]
    [InlineData(2.0, "2.0")]
    [InlineData(100.0, "100.0")]
    [InlineData(1e16, "1e+16")]
    [InlineData(1234567890123456.0, "1234567890123456.0")]
    [InlineData(-0.5, "-0.5")]
    [InlineData(0.0, "0.0")]
    [InlineData(123.456, "123.456")]
    public void PythonFloatReprMatchesPython(double value, string expected)
    {
        Assert.Equal(expected, PythonFloat.Repr(value));
    }

    [Fact]
    public void AHandWrittenBitsandbytesFileIsReadAndDequantizedExactly()
    {
        // A file laid out as transformers saves a 4-bit Linear(4, 16): written by hand, not by our writer.
        float[] w = TestSupport.Normal(64, seed: 30, scale: 0.1);
        var packed = new byte[32];
        var absmax = new float[1];
        BlockwiseQuantizer.Quantize(w, packed, absmax, QuantType.Nf4, 64);
        byte[] json = Encoding.UTF8.GetBytes("{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"float16\", \"shape\": [16, 4]}");
        string path = Path.Combine(TestSupport.TempDir(), "bnb.safetensors");
        SafeTensorsWriter.Save(path, [
            (new SafeTensorSpec("lin.weight", DType.U8, [32, 1]), packed),
            (new SafeTensorSpec("lin.weight.absmax", DType.F32, [1]), TestSupport.Bytes(absmax)),
            (new SafeTensorSpec("lin.weight.quant_map", DType.F32, [16]), TestSupport.Bytes(Quantization.Reference.Nf4.Select(d => (float)d).ToArray())),
            (new SafeTensorSpec("lin.weight.quant_state.bitsandbytes__nf4", DType.U8, [json.Length]), json),
            (new SafeTensorSpec("lin.bias", DType.F16, [16]), new byte[32]),
        ]);
        using SafeTensorsFile file = SafeTensorsFile.Open(path);
        Assert.True(BnbFourBitTensor.IsQuantized(file, "lin.weight"));
        Assert.False(BnbFourBitTensor.IsQuantized(file, "lin.bias"));
        QuantizedTensor t = BnbFourBitTensor.Read(file, "lin.weight");
        Assert.Equal(DType.F16, t.State.Dtype);
        Assert.Equal([16L, 4], t.State.Shape);
        var back = new Half[64];
        t.Dequantize(back);
        float[] expected = Quantization.Reference.Dequantize(packed, absmax, 64, 64, QuantType.Nf4);
        Assert.Equal(expected.Select(x => (Half)x), back);
    }

    public static TheoryData<string, string> Corruptions() => new()
    {
        { "drop:w.weight.absmax", "w.weight.absmax" },
        { "drop:w.weight.nested_absmax", "w.weight.nested_absmax" },
        { "drop:w.weight.quant_map", "w.weight.quant_map" },
        { "drop:w.weight.quant_state.bitsandbytes__nf4", "w.weight" },
        { "json:{\"quant_type\": \"nf4\", \"blocksize\": 48, \"dtype\": \"bfloat16\", \"shape\": [48, 64]}", "w.weight.quant_state.bitsandbytes__nf4" },
        { "json:{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"bfloat16\", \"shape\": [48, 65]}", "w.weight" },
        { "json:{\"quant_type\": \"fp4\", \"blocksize\": 64, \"dtype\": \"bfloat16\", \"shape\": [48, 64]}", "w.weight.quant_state.bitsandbytes__nf4" },
        { "json:{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"int8\", \"shape\": [48, 64]}", "w.weight.quant_state.bitsandbytes__nf4" },
        { "json:{\"quant_type\": \"nf4\", \"blocksize\": 64", "w.weight.quant_state.bitsandbytes__nf4" },
        { "json:{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"bfloat16\", \"shape\": [48, 64], \"nested_blocksize\": 256}", "w.weight.quant_state.bitsandbytes__nf4" },
        { "json:{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"bfloat16\", \"shape\": [48, 64]}", "w.weight.absmax" },
        { "map", "w.weight.quant_map" },
    };

    [Theory]
    [MemberData(nameof(Corruptions))]
    public void CorruptLayoutsAreReportedByTensorName(string corruption, string expectedItem)
    {
        var entries = BnbFourBitTensor.Entries("w.weight", Sample(doubleQuant: true)).ToList();
        if (corruption.StartsWith("drop:", StringComparison.Ordinal))
        {
            entries.RemoveAll(e => e.Spec.Name == corruption[5..]);
        }
        else if (corruption.StartsWith("json:", StringComparison.Ordinal))
        {
            byte[] json = Encoding.UTF8.GetBytes(corruption[5..]);
            int i = entries.FindIndex(e => e.Spec.Name.Contains("quant_state", StringComparison.Ordinal));
            entries[i] = (new SafeTensorSpec(entries[i].Spec.Name, DType.U8, [json.Length]), json);
        }
        else
        {
            int i = entries.FindIndex(e => e.Spec.Name == "w.weight.quant_map");
            float[] map = FourBitCodes.Values(QuantType.Nf4).ToArray();
            map[3] += 0.01f;
            entries[i] = (entries[i].Spec, TestSupport.Bytes(map));
        }

        string path = Path.Combine(TestSupport.TempDir(), "corrupt.safetensors");
        SafeTensorsWriter.Save(path, entries);
        using SafeTensorsFile file = SafeTensorsFile.Open(path);
        var e = Assert.Throws<CheckpointFormatException>(() => BnbFourBitTensor.Read(file, "w.weight"));
        Assert.Equal(expectedItem, e.ItemName);
        Assert.Equal(path, e.FilePath);
    }
}
