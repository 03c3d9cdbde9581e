using System.Buffers.Binary;
using System.Text;
using QLoRA.Core.SafeTensors;

namespace QLoRA.Core.Tests.SafeTensors;

/// <summary>A corpus of malformed files generated here: each must raise the typed error naming file and tensor, fast, without allocating what it claims.</summary>
public class SafeTensorsMalformedTests
{
    private static readonly string Dir = TestSupport.TempDir();

    private static string Make(string name, byte[] header, byte[] data, ulong? claimedLength = null)
    {
        string path = Path.Combine(Dir, name + ".safetensors");
        var bytes = new byte[8 + header.Length + data.Length];
        BinaryPrimitives.WriteUInt64LittleEndian(bytes, claimedLength ?? (ulong)header.Length);
        header.CopyTo(bytes, 8);
        data.CopyTo(bytes, 8 + header.Length);
        File.WriteAllBytes(path, bytes);
        return path;
    }

    private static string Make(string name, string header, int dataBytes) =>
        Make(name, Encoding.UTF8.GetBytes(header), new byte[dataBytes]);

    private static SafeTensorsFormatException Fails(string path, string? tensor = null, string? messagePart = null)
    {
        long before = GC.GetAllocatedBytesForCurrentThread();
        var e = Assert.Throws<SafeTensorsFormatException>(() => { using var _ = SafeTensorsFile.Open(path); });
        long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
        Assert.True(allocated < 4_000_000, $"opening {Path.GetFileName(path)} allocated {allocated} bytes");
        Assert.Equal(path, e.FilePath);
        Assert.Contains(path, e.Message);
        if (tensor is not null)
        {
            Assert.Equal(tensor, e.TensorName);
            Assert.Contains($"'{tensor}'", e.Message);
        }

        if (messagePart is not null)
        {
            Assert.Contains(messagePart, e.Message);
        }

        return e;
    }

    private const string Good = "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"b\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[8,12]}}";

    public static TheoryData<string, string, int, string?, string> HeaderCases() => new()
    {
        { "bad-json", "{\"a\": {\"dtype\": ", 0, null, "not valid JSON" },
        { "trailing-json-garbage", "{}xyz", 0, null, "not valid JSON" },
        { "root-array", "[1, 2]", 0, null, "JSON object" },
        { "entry-not-object", "{\"a\": 5}", 0, "a", "must be an object" },
        { "missing-dtype", "{\"a\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "a", "dtype" },
        { "dtype-not-string", "{\"a\":{\"dtype\":4,\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "a", "dtype" },
        { "unknown-dtype", "{\"a\":{\"dtype\":\"Q4\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1, "a", "unsupported dtype 'Q4'" },
        { "fp8-dtype", "{\"a\":{\"dtype\":\"F8_E4M3\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1, "a", "unsupported dtype" },
        { "lowercase-dtype", "{\"a\":{\"dtype\":\"f32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "a", "unsupported dtype" },
        { "shape-negative", "{\"a\":{\"dtype\":\"U8\",\"shape\":[-1],\"data_offsets\":[0,1]}}", 1, "a", "non-negative" },
        { "shape-fraction", "{\"a\":{\"dtype\":\"U8\",\"shape\":[2.5],\"data_offsets\":[0,1]}}", 1, "a", "non-negative integers" },
        { "shape-not-array", "{\"a\":{\"dtype\":\"U8\",\"shape\":3,\"data_offsets\":[0,3]}}", 3, "a", "shape" },
        { "shape-overflow", "{\"a\":{\"dtype\":\"F64\",\"shape\":[4611686018427387904,4611686018427387904],\"data_offsets\":[0,8]}}", 8, "a", "too large" },
        { "offsets-missing", "{\"a\":{\"dtype\":\"U8\",\"shape\":[1]}}", 1, "a", "data_offsets" },
        { "offsets-three", "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1,2]}}", 1, "a", "data_offsets" },
        { "offsets-negative", "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[-1,0]}}", 1, "a", "non-negative" },
        { "offsets-reversed", "{\"a\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[4,0]}}", 4, "a", "end before" },
        { "size-mismatch", "{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8, "a", "needs 12 bytes" },
        { "out-of-range", "{\"a\":{\"dtype\":\"U8\",\"shape\":[16],\"data_offsets\":[0,16]}}", 8, "a", "past the end" },
        { "huge-claim", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1000000000,1000],\"data_offsets\":[0,4000000000000]}}", 16, "a", "past the end" },
        { "overlap", "{\"a\":{\"dtype\":\"U8\",\"shape\":[8],\"data_offsets\":[0,8]},\"b\":{\"dtype\":\"U8\",\"shape\":[8],\"data_offsets\":[4,12]}}", 12, "b", "overlap tensor 'a'" },
        { "gap", "{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},\"b\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[8,12]}}", 12, "b", "gap" },
        { "not-from-zero", "{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[4,8]}}", 8, "a", "gap" },
        { "trailing-bytes", "{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]}}", 12, null, "8 trailing bytes" },
        { "duplicate-name", "{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[4,8]}}", 8, "a", "more than once" },
        { "metadata-not-object", "{\"__metadata__\":[1],\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1, "__metadata__", "object of string" },
        { "metadata-non-string", "{\"__metadata__\":{\"n\":1},\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1, "__metadata__", "must be a string" },
        { "deep-nesting", "{\"__metadata__\":{\"x\":" + new string('[', 64) + new string(']', 64) + "}}", 0, "__metadata__", "must be a string" },
        { "deep-nesting-in-an-unknown-field", "{\"t\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[0,0],\"x\":" + new string('[', 64) + new string(']', 64) + "}}", 0, "t", "not valid JSON" },
    };

    [Theory]
    [MemberData(nameof(HeaderCases))]
    public void MalformedHeaderRaisesTheTypedError(string name, string header, int dataBytes, string? tensor, string message)
    {
        Fails(Make(name, header, dataBytes), tensor, message);
    }

    [Fact]
    public void InvalidUtf8InTheHeaderIsRejected()
    {
        byte[] header = Encoding.UTF8.GetBytes("{\"a\xff\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}");
        header[4] = 0xFF;
        Fails(Make("bad-utf8", header, new byte[1]), null, "not valid JSON");
    }

    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    [InlineData(4)]
    [InlineData(7)]
    public void FilesTooShortForTheLengthPrefixAreRejected(int length)
    {
        string path = Path.Combine(Dir, $"short{length}.safetensors");
        File.WriteAllBytes(path, new byte[length]);
        Fails(path, null, "too short");
    }

    [Theory]
    [InlineData(ulong.MaxValue)]
    [InlineData(1UL << 40)]
    [InlineData(200_000_000UL)]
    [InlineData(0UL)]
    [InlineData(1UL)]
    public void AbsurdHeaderLengthsAreRejectedWithoutAllocating(ulong claimed)
    {
        Fails(Make($"len{claimed}", Encoding.UTF8.GetBytes(Good), new byte[12], claimed), null, "header length");
    }

    [Fact]
    public void TruncationAtEveryByteOfAValidFileIsRejected()
    {
        string source = Make("valid", Good, 12);
        using (SafeTensorsFile.Open(source))
        {
        }

        byte[] bytes = File.ReadAllBytes(source);
        for (int cut = 0; cut < bytes.Length; cut++)
        {
            string path = Path.Combine(Dir, $"cut{cut}.safetensors");
            File.WriteAllBytes(path, bytes[..cut]);
            Fails(path);
        }
    }

    [Fact]
    public void MissingTensorLookupIsTyped()
    {
        using SafeTensorsFile file = SafeTensorsFile.Open(Make("lookup", Good, 12));
        var e = Assert.Throws<SafeTensorsFormatException>(() => file.GetInfo("nope"));
        Assert.Equal("nope", e.TensorName);
        Assert.Throws<ArgumentException>(() => file.GetSpan<double>("a"));
        Assert.Throws<ArgumentOutOfRangeException>(() => file.GetBytes("a", 4, 8).Length);
    }
}
