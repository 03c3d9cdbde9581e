using System.Text;
using QLoRA.Core.BitsAndBytes;
using QLoRA.Core.SafeTensors;

namespace QLoRA.Core.Tests.Hardening;

/// <summary>Hostile input found by trying the readers from outside: each a typed error, never another exception type.</summary>
public sealed class ReaderHardeningTests
{
    private static QuantizedTensor Sample(bool doubleQuant) =>
        QuantizedTensor.Quantize(TestSupport.Normal(48 * 64, seed: 5, scale: 0.1), [48, 64], new QuantizationOptions(QuantType.Nf4, 64, doubleQuant));

    private static string WriteWithState(string json, bool doubleQuant = true)
    {
        var entries = BnbFourBitTensor.Entries("w.weight", Sample(doubleQuant)).ToList();
        byte[] bytes = Encoding.UTF8.GetBytes(json);
        int i = entries.FindIndex(e => e.Spec.Name.Contains("quant_state", StringComparison.Ordinal));
        entries[i] = (new SafeTensorSpec(entries[i].Spec.Name, DType.U8, [bytes.Length]), bytes);
        string path = Path.Combine(TestSupport.TempDir(), "hostile.safetensors");
        SafeTensorsWriter.Save(path, entries);
        return path;
    }

    public static TheoryData<string> HostileStates => new()
    {
        // shape whose element count overflows 64 bits
        """{"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [1099511627776, 1099511627776], "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": 0.01}""",
        // element count that fits but whose byte count does not
        """{"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [9223372036854775807], "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": 0.01}""",
        // an offset beyond float32's range
        """{"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [48, 64], "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": 1e39}""",
        // nested_dtype given as a number
        """{"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [48, 64], "nested_blocksize": 256, "nested_dtype": 32, "nested_offset": 0.01}""",
        // nested_blocksize that is not bitsandbytes' 256
        """{"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [48, 64], "nested_blocksize": 3, "nested_dtype": "float32", "nested_offset": 0.01}""",
        // a duplicate key
        """{"quant_type": "nf4", "quant_type": "fp4", "blocksize": 64, "dtype": "bfloat16", "shape": [48, 64], "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": 0.01}""",
        // not an object
        """[1, 2, 3]""",
        // invalid UTF-8 is covered by the raw bytes test below; a number where the shape list belongs
        """{"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": 3072, "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": 0.01}""",
        // a fractional dimension
        """{"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [48.5, 64], "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": 0.01}""",
    };

    [Theory]
    [MemberData(nameof(HostileStates))]
    public void Hostile_quant_states_are_checkpoint_format_errors_naming_file_and_tensor(string json)
    {
        string path = WriteWithState(json);
        using var file = SafeTensorsFile.Open(path);
        var e = Assert.Throws<CheckpointFormatException>(() => BnbFourBitTensor.Read(file, "w.weight"));
        Assert.Equal(path, e.FilePath);
        Assert.StartsWith("w.weight", e.ItemName);
    }

    [Fact]
    public void Quant_state_bytes_that_are_not_utf8_are_a_typed_error()
    {
        var entries = BnbFourBitTensor.Entries("w.weight", Sample(false)).ToList();
        int i = entries.FindIndex(e => e.Spec.Name.Contains("quant_state", StringComparison.Ordinal));
        entries[i] = (new SafeTensorSpec(entries[i].Spec.Name, DType.U8, [4]), new byte[] { 0x7B, 0xFF, 0xFE, 0x7D });
        string path = Path.Combine(TestSupport.TempDir(), "utf8.safetensors");
        SafeTensorsWriter.Save(path, entries);
        using var file = SafeTensorsFile.Open(path);
        Assert.Throws<CheckpointFormatException>(() => BnbFourBitTensor.Read(file, "w.weight"));
    }

    [Theory]
    [InlineData(0)]
    [InlineData(-64)]
    [InlineData(48)]
    [InlineData(8192)]
    public void Invalid_block_sizes_through_the_public_api_are_argument_out_of_range(int blockSize)
    {
        float[] data = TestSupport.Normal(256, seed: 1);
        Assert.Throws<ArgumentOutOfRangeException>(() => QuantizedTensor.Quantize(data, [256], new QuantizationOptions(QuantType.Nf4, blockSize, false)));
        Assert.Throws<ArgumentOutOfRangeException>(() => QuantizedTensor.Quantize(data, [256], new QuantizationOptions(QuantType.Nf4, blockSize, true)));
        Assert.Throws<ArgumentOutOfRangeException>(() => BlockwiseLayout.BlockCount(256, blockSize));
        Assert.Throws<ArgumentOutOfRangeException>(() => BlockwiseQuantizer.Quantize(data, new byte[128], new float[8], QuantType.Nf4, blockSize));
        Assert.Throws<ArgumentOutOfRangeException>(() => BlockwiseDequantizer.Dequantize(new byte[128], new float[8], QuantType.Nf4, blockSize, new float[256]));
    }

    [Fact]
    public void Negative_and_overflowing_shapes_through_the_public_api_are_argument_errors()
    {
        Assert.ThrowsAny<ArgumentException>(() => QuantizedTensor.Quantize(new float[4], [-2, -2]));
        Assert.ThrowsAny<ArgumentException>(() => QuantizedTensor.Quantize(new float[4], [1L << 40, 1L << 40]));
        Assert.Throws<ArgumentOutOfRangeException>(() => BlockwiseLayout.PackedByteCount(-1));
        Assert.Equal(long.MaxValue / 2 + 1, BlockwiseLayout.PackedByteCount(long.MaxValue));
        Assert.Equal(long.MaxValue / 64 + 1, BlockwiseLayout.BlockCount(long.MaxValue, 64));
    }

    [Theory]
    [InlineData(long.MaxValue - 2, 8)]
    [InlineData(long.MaxValue, 1)]
    [InlineData(-1, 1)]
    [InlineData(0, -1)]
    [InlineData(1, int.MaxValue)]
    public void Slices_outside_the_tensor_are_refused_even_when_offset_plus_length_overflows(long offset, int length)
    {
        string path = Path.Combine(TestSupport.TempDir(), "slice.safetensors");
        SafeTensorsWriter.Save(path, [(new SafeTensorSpec("t", DType.F32, [4]), new byte[16])]);
        using var file = SafeTensorsFile.Open(path);
        Assert.Throws<ArgumentOutOfRangeException>(() => { _ = file.GetBytes("t", offset, length); });
        Assert.Equal(16, file.GetBytes("t", 0, 16).Length);
        Assert.Equal(0, file.GetBytes("t", 16, 0).Length);
    }

    [Theory]
    [InlineData("""{"t": {"dtype": "F32", "dtype": "F16", "shape": [4], "data_offsets": [0, 16]}}""")]
    [InlineData("""{"t": {"dtype": "F32", "shape": [4], "shape": [2, 2], "data_offsets": [0, 16]}}""")]
    [InlineData("""{"t": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16], "data_offsets": [0, 16]}}""")]
    [InlineData("""{"t": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}, "t": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}""")]
    [InlineData("""{"__metadata__": {"a": "1", "a": "2"}, "t": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}""")]
    public void Duplicate_keys_in_a_header_are_refused_as_safetensors_does(string header)
    {
        string path = Path.Combine(TestSupport.TempDir(), "dup.safetensors");
        byte[] h = Encoding.UTF8.GetBytes(header);
        using (var f = File.Create(path))
        {
            f.Write(BitConverter.GetBytes((long)h.Length));
            f.Write(h);
            f.Write(new byte[16]);
        }
        var e = Assert.Throws<SafeTensorsFormatException>(() => SafeTensorsFile.Open(path).Dispose());
        Assert.Equal(path, e.FilePath);
    }
}

/// <summary>What opening a hostile header may cost in memory (time is measured by bench/'s HostileHeaderOpen, not here).</summary>
public sealed class HostileHeaderCostTests
{
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Many_empty_tensors_allocate_at_most_four_times_the_header(bool shuffled)
    {
        const int count = 150_000;
        var order = Enumerable.Range(0, count).ToArray();
        if (shuffled) new Random(1).Shuffle(order);
        var sb = new StringBuilder(count * 60).Append('{');
        for (int k = 0; k < count; k++)
        {
            if (k > 0) sb.Append(',');
            sb.Append("\"t").Append(order[k]).Append("\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]}");
        }
        byte[] json = Encoding.UTF8.GetBytes(sb.Append('}').ToString());
        string path = Path.Combine(TestSupport.TempDir(), "many.safetensors");
        using (var f = File.Create(path))
        {
            f.Write(BitConverter.GetBytes((long)json.Length));
            f.Write(json);
        }
        SafeTensorsFile.Open(path).Dispose();   // JIT and page cache out of the measurement
        long before = GC.GetAllocatedBytesForCurrentThread();
        using (var file = SafeTensorsFile.Open(path)) Assert.Equal(count, file.Tensors.Count);
        long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
        Assert.True(allocated <= 4L * json.Length, $"opening a {json.Length}-byte header allocated {allocated} bytes ({(double)allocated / json.Length:F2}×)");
    }

    [Fact]
    public void A_whitespace_header_allocates_little()
    {
        byte[] json = Encoding.UTF8.GetBytes("{" + new string(' ', 5_000_000) + "}");
        string path = Path.Combine(TestSupport.TempDir(), "blank.safetensors");
        using (var f = File.Create(path))
        {
            f.Write(BitConverter.GetBytes((long)json.Length));
            f.Write(json);
        }
        SafeTensorsFile.Open(path).Dispose();
        long before = GC.GetAllocatedBytesForCurrentThread();
        using (var file = SafeTensorsFile.Open(path)) Assert.Empty(file.Tensors);
        Assert.True(GC.GetAllocatedBytesForCurrentThread() - before <= json.Length);
    }
}
