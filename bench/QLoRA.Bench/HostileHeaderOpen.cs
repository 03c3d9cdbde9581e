using System.Text;
using BenchmarkDotNet.Attributes;
using QLoRA.Core.SafeTensors;

namespace QLoRA.Bench;

/// <summary>
/// Opening the largest headers the safetensors format allows (≤ 100 MB): 1.4 million empty tensors declared in offset
/// order and shuffled, and a header of whitespace. Target: ≤ 2 s and ≤ 4× the header's size allocated.
/// </summary>
[MemoryDiagnoser(displayGenColumns: false)]
public class HostileHeaderOpen
{
    private string _dir = "";

    [Params("1.4M empty tensors", "1.4M shuffled", "100 MB whitespace")]
    public string Header { get; set; } = "";

    private string PathFor(string header) => Path.Combine(_dir, header.Replace(' ', '_') + ".safetensors");

    [GlobalSetup]
    public void Setup()
    {
        _dir = Directory.CreateTempSubdirectory("qlora-hostile-").FullName;
        byte[] json = Header switch
        {
            "100 MB whitespace" => Encoding.UTF8.GetBytes("{" + new string(' ', 99_999_990) + "}"),
            _ => EmptyTensors(1_400_000, shuffled: Header.Contains("shuffled")),
        };
        using var f = File.Create(PathFor(Header));
        f.Write(BitConverter.GetBytes((long)json.Length));
        f.Write(json);
        Console.WriteLine($"// header: {json.Length / 1e6:F1} MB");
    }

    internal static byte[] EmptyTensors(int count, bool shuffled)
    {
        var order = Enumerable.Range(0, count).ToArray();
        if (shuffled) new Random(1).Shuffle(order);
        var sb = new StringBuilder(count * 60).Append('{');
        for (int k = 0; k < count; k++)
        {
            if (k > 0) sb.Append(',');
            sb.Append("\"t").Append(order[k]).Append("\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]}");
        }
        return Encoding.UTF8.GetBytes(sb.Append('}').ToString());
    }

    [GlobalCleanup]
    public void Cleanup() => Directory.Delete(_dir, recursive: true);

    [Benchmark(Description = "SafeTensorsFile.Open")]
    public int Open()
    {
        using var file = SafeTensorsFile.Open(PathFor(Header));
        return file.Tensors.Count;
    }
}
