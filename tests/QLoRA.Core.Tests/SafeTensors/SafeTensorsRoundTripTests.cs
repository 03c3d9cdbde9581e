using System.Buffers.Binary;
using System.Text;
using System.Text.Json;
using QLoRA.Core.SafeTensors;

namespace QLoRA.Core.Tests.SafeTensors;

public class SafeTensorsRoundTripTests
{
    public static TheoryData<DType> AllDtypes() => new(Enum.GetValues<DType>());

    private static byte[] RandomBytes(int count, int seed)
    {
        var bytes = new byte[count];
        new Random(seed).NextBytes(bytes);
        return bytes;
    }

    [Theory]
    [MemberData(nameof(AllDtypes))]
    public void EveryDtypeRoundTripsBitForBit(DType dtype)
    {
        string dir = TestSupport.TempDir();
        string path = Path.Combine(dir, "t.safetensors");
        long[] shape = [3, 5, 7];
        byte[] data = RandomBytes(105 * dtype.SizeInBytes(), (int)dtype);
        byte[] scalar = RandomBytes(dtype.SizeInBytes(), 1);
        SafeTensorsWriter.Save(path, [
            (new SafeTensorSpec("a.weight", dtype, shape), data),
            (new SafeTensorSpec("scalar", dtype, []), scalar),
            (new SafeTensorSpec("empty", dtype, [0, 4]), Array.Empty<byte>()),
        ], new Dictionary<string, string> { ["format"] = "pt", ["note"] = "ünïcode ✓" });

        using SafeTensorsFile file = SafeTensorsFile.Open(path);
        SafeTensorInfo info = file.GetInfo("a.weight");
        Assert.Equal(dtype, info.Dtype);
        Assert.Equal(shape, info.Shape);
        Assert.Equal(data, file.GetBytes("a.weight").ToArray());
        Assert.Equal(scalar, file.GetBytes("scalar").ToArray());
        Assert.Empty(file.GetInfo("scalar").Shape);
        Assert.Equal(0, file.GetBytes("empty").Length);
        Assert.Equal("ünïcode ✓", file.Metadata["note"]);
        Assert.Equal(0, (file.HeaderLength + 8) % 8);
    }

    [Fact]
    public void HeaderIsTheReferenceLayout()
    {
        string path = Path.Combine(TestSupport.TempDir(), "h.safetensors");
        SafeTensorsWriter.Save(path, [
            (new SafeTensorSpec("b", DType.U8, [2]), new byte[] { 1, 2 }),
            (new SafeTensorSpec("a", DType.F32, [1]), new byte[] { 0, 0, 128, 63 }),
        ], new Dictionary<string, string> { ["format"] = "pt" });
        byte[] bytes = File.ReadAllBytes(path);
        ulong n = BinaryPrimitives.ReadUInt64LittleEndian(bytes);
        string header = Encoding.UTF8.GetString(bytes, 8, (int)n);
        // Larger alignment first, __metadata__ first, compact JSON, space padding to 8 bytes.
        Assert.Equal("{\"__metadata__\":{\"format\":\"pt\"},\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},\"b\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[4,6]}}", header.TrimEnd(' '));
        Assert.Equal(0, (8 + header.Length) % 8);
        Assert.Equal(new byte[] { 0, 0, 128, 63, 1, 2 }, bytes[(8 + (int)n)..]);
    }

    [Fact]
    public void StreamingInChunksEqualsOneShot()
    {
        string dir = TestSupport.TempDir();
        byte[] big = RandomBytes(1 << 20, 3);
        byte[] small = RandomBytes(40, 4);
        var specs = new[] { new SafeTensorSpec("big", DType.BF16, [512, 1024]), new SafeTensorSpec("small", DType.F32, [10]) };
        using (var writer = new SafeTensorsWriter(Path.Combine(dir, "s.safetensors"), specs))
        {
            for (int offset = 0; offset < big.Length; offset += 100_003)
            {
                writer.Write("big", big.AsSpan(offset, Math.Min(100_003, big.Length - offset)));
            }

            writer.Write("small", small);
            writer.Commit();
        }

        using SafeTensorsFile file = SafeTensorsFile.Open(Path.Combine(dir, "s.safetensors"));
        Assert.Equal(big, file.GetBytes("big").ToArray());
        Assert.Equal(small, file.GetBytes("small").ToArray());
        Assert.Equal(MemoryMarshalCast(small), file.GetSpan<float>("small").ToArray());
    }

    private static float[] MemoryMarshalCast(byte[] b) => System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(b).ToArray();

    [Fact]
    public void AnUncommittedWriteLeavesNothingBehind()
    {
        string dir = TestSupport.TempDir();
        string path = Path.Combine(dir, "partial.safetensors");
        using (var writer = new SafeTensorsWriter(path, [new SafeTensorSpec("x", DType.F32, [4])]))
        {
            writer.Write("x", new byte[8]);
            Assert.Throws<InvalidOperationException>(() => writer.Commit());
        }

        Assert.Empty(Directory.GetFiles(dir));
    }

    [Fact]
    public void AFailedRewriteKeepsTheOldFile()
    {
        string dir = TestSupport.TempDir();
        string path = Path.Combine(dir, "keep.safetensors");
        SafeTensorsWriter.Save(path, [(new SafeTensorSpec("x", DType.U8, [1]), new byte[] { 42 })]);
        using (var writer = new SafeTensorsWriter(path, [new SafeTensorSpec("y", DType.U8, [2])]))
        {
            Assert.Throws<InvalidOperationException>(() => writer.Write("wrong", new byte[2]));
            Assert.Throws<InvalidOperationException>(() => writer.Write("y", new byte[3]));
        }

        using SafeTensorsFile file = SafeTensorsFile.Open(path);
        Assert.Equal(new byte[] { 42 }, file.GetBytes("x").ToArray());
        Assert.Single(Directory.GetFiles(dir));
    }

    [Fact]
    public void WriterRejectsBadDeclarations()
    {
        string path = Path.Combine(TestSupport.TempDir(), "bad.safetensors");
        Assert.Throws<ArgumentException>(() => new SafeTensorsWriter(path, [new SafeTensorSpec("a", DType.U8, [1]), new SafeTensorSpec("a", DType.U8, [1])]));
        Assert.Throws<ArgumentException>(() => new SafeTensorsWriter(path, [new SafeTensorSpec("__metadata__", DType.U8, [1])]));
        Assert.Throws<ArgumentException>(() => SafeTensorsWriter.Save(path, [(new SafeTensorSpec("a", DType.F32, [2]), new byte[4])]));
        Assert.False(File.Exists(path));
    }

    [Fact]
    public void ShardedCheckpointReadsThroughTheIndex()
    {
        string dir = TestSupport.TempDir();
        byte[] a = RandomBytes(16, 1);
        byte[] b = RandomBytes(8, 2);
        SafeTensorsWriter.Save(Path.Combine(dir, "model-00001-of-00002.safetensors"), [(new SafeTensorSpec("layers.0.w", DType.F32, [4]), a)]);
        SafeTensorsWriter.Save(Path.Combine(dir, "model-00002-of-00002.safetensors"), [(new SafeTensorSpec("layers.1.w", DType.BF16, [4]), b)]);
        new SafeTensorsIndex(new Dictionary<string, string>
        {
            ["layers.0.w"] = "model-00001-of-00002.safetensors",
            ["layers.1.w"] = "model-00002-of-00002.safetensors",
        }, 24).Write(Path.Combine(dir, SafeTensorsIndex.FileName));

        using SafeTensorsCheckpoint checkpoint = SafeTensorsCheckpoint.Open(dir);
        Assert.Equal(2, checkpoint.ShardFiles.Count);
        Assert.Equal(a, checkpoint.GetBytes("layers.0.w").ToArray());
        Assert.Equal(b, checkpoint.GetBytes("layers.1.w").ToArray());
        Assert.Equal(DType.BF16, checkpoint.GetInfo("layers.1.w").Dtype);
        Assert.Equal(24, SafeTensorsIndex.Read(Path.Combine(dir, SafeTensorsIndex.FileName)).TotalSize);
        Assert.Throws<SafeTensorsFormatException>(() => checkpoint.GetInfo("layers.2.w"));
    }

    [Fact]
    public void ShardedCheckpointInconsistenciesNameTheTensor()
    {
        string dir = TestSupport.TempDir();
        SafeTensorsWriter.Save(Path.Combine(dir, "s1.safetensors"), [(new SafeTensorSpec("x", DType.U8, [1]), new byte[1]), (new SafeTensorSpec("stray", DType.U8, [1]), new byte[1])]);
        string index = Path.Combine(dir, SafeTensorsIndex.FileName);

        File.WriteAllText(index, JsonSerializer.Serialize(new { weight_map = new Dictionary<string, string> { ["x"] = "s1.safetensors" } }));
        var e = Assert.Throws<SafeTensorsFormatException>(() => SafeTensorsCheckpoint.Open(dir));
        Assert.Equal("stray", e.TensorName);

        File.WriteAllText(index, JsonSerializer.Serialize(new { weight_map = new Dictionary<string, string> { ["x"] = "s1.safetensors", ["stray"] = "s1.safetensors", ["y"] = "s2.safetensors" } }));
        e = Assert.Throws<SafeTensorsFormatException>(() => SafeTensorsCheckpoint.Open(dir));
        Assert.Equal("y", e.TensorName);
        Assert.Contains("s2.safetensors", e.Message);

        File.WriteAllText(index, JsonSerializer.Serialize(new { weight_map = new Dictionary<string, string> { ["x"] = "../s1.safetensors" } }));
        e = Assert.Throws<SafeTensorsFormatException>(() => SafeTensorsCheckpoint.Open(dir));
        Assert.Equal("x", e.TensorName);

        File.WriteAllText(index, "{\"weight_map\": [1, 2]}");
        Assert.Throws<SafeTensorsFormatException>(() => SafeTensorsCheckpoint.Open(dir));
    }

    [Theory]
    [InlineData(1 << 16)]
    [InlineData(8)] // too small: the writer must fall back to copying behind a larger header
    public void AppendWriterDeclaresTensorsAsItGoes(int reserved)
    {
        string path = Path.Combine(TestSupport.TempDir(), "append.safetensors");
        byte[] a = RandomBytes(4096, 1);
        byte[] b = RandomBytes(10, 2);
        using (var writer = new SafeTensorsAppendWriter(path, reserved))
        {
            writer.Begin(new SafeTensorSpec("a", DType.BF16, [32, 64]));
            writer.Write(a.AsSpan(0, 1000));
            writer.Write(a.AsSpan(1000));
            writer.Add(new SafeTensorSpec("json", DType.U8, [10]), b);
            writer.Add(new SafeTensorSpec("empty", DType.F32, [0]), []);
            Assert.Throws<InvalidOperationException>(() => writer.Begin(new SafeTensorSpec("a", DType.U8, [1])));
            writer.Commit(new Dictionary<string, string> { ["format"] = "pt" });
        }

        using SafeTensorsFile file = SafeTensorsFile.Open(path);
        Assert.Equal(a, file.GetBytes("a").ToArray());
        Assert.Equal(b, file.GetBytes("json").ToArray());
        Assert.Equal("pt", file.Metadata["format"]);
        Assert.Single(Directory.GetFiles(Path.GetDirectoryName(path)!));
    }

    [Fact]
    public void AppendWriterLeavesNothingWhenAbandoned()
    {
        string dir = TestSupport.TempDir();
        using (var writer = new SafeTensorsAppendWriter(Path.Combine(dir, "x.safetensors")))
        {
            writer.Begin(new SafeTensorSpec("a", DType.F32, [4]));
            writer.Write(new byte[4]);
            Assert.Throws<InvalidOperationException>(() => writer.Commit());
        }

        Assert.Empty(Directory.GetFiles(dir));
    }
}
