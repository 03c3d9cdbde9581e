using System.Text.Json.Nodes;
using QLoRA.Build.Tasks;
using QLoRA.Core;
using QLoRA.Core.BitsAndBytes;
using QLoRA.Core.Manifest;
using QLoRA.Core.Numerics;
using QLoRA.Core.Quantization;
using QLoRA.Core.SafeTensors;

namespace QLoRA.Build.Tests;

/// <summary>The quantizer behind the task, run directly (no MSBuild): layout, numbers, manifest, errors.</summary>
public class WeightsQuantizerTests
{
    private static string TempDir() => Directory.CreateTempSubdirectory("qlora-build-").FullName;

    private static WeightsJob Job(string src, string output, QuantizationOptions? options, IReadOnlyList<string>? sources = null) =>
        new(sources ?? [Path.Combine(src, "model.safetensors")], Path.Combine(src, "config.json"), "tiny", output, options, ["lm_head", "embed_tokens"]);

    internal static void AssertFolderMatchesSource(string modelDir, Dictionary<string, byte[]> source, QuantizationOptions options)
    {
        using SafeTensorsFile file = SafeTensorsFile.Open(Path.Combine(modelDir, "model.safetensors"));
        foreach ((string name, byte[] bytes) in source)
        {
            bool linear = name.Contains("_proj.", StringComparison.Ordinal);
            if (!linear)
            {
                Assert.Equal(bytes, file.GetBytes(name).ToArray()); // kept tensors are copied bit for bit
                continue;
            }

            QuantizedTensor q = BnbFourBitTensor.Read(file, name);
            Assert.Equal(options.Type, q.State.Type);
            Assert.Equal(options.BlockSize, q.State.BlockSize);
            Assert.Equal(options.DoubleQuant, q.State.IsDoubleQuantized);
            Assert.Equal(DType.BF16, q.State.Dtype);
            // The task must write exactly what QLoRA.Core's quantizer (checked against bitsandbytes' vectors) produces:
            // the same codes and the same absmax statistics, bit for bit — no tolerance that a neighbouring code would pass.
            QuantizedTensor reference = QuantizedTensor.Quantize(bytes, DType.BF16, q.State.Shape, options, name);
            Assert.Equal(reference.Packed.ToArray(), q.Packed.ToArray());
            Assert.Equal(reference.State.Absmax.Decode().Select(BitConverter.SingleToInt32Bits), q.State.Absmax.Decode().Select(BitConverter.SingleToInt32Bits));
            if (reference.State.Absmax is DoubleQuantizedAbsmax dq)
            {
                var stored = Assert.IsType<DoubleQuantizedAbsmax>(q.State.Absmax);
                Assert.Equal(dq.Codes.ToArray(), stored.Codes.ToArray());
                Assert.Equal(BitConverter.SingleToInt32Bits(dq.Offset), BitConverter.SingleToInt32Bits(stored.Offset));
            }
        }
    }

    [Fact]
    public void WritesAnHfLoadableFolderAndManifest()
    {
        string src = TempDir(), output = TempDir();
        Dictionary<string, byte[]> source = TinyCheckpoint.Write(src);
        var options = new QuantizationOptions();
        var messages = new List<string>();
        string modelDir = new WeightsQuantizer(messages.Add).Run(Job(src, output, options));

        Assert.Equal(Path.Combine(output, "tiny"), modelDir);
        AssertFolderMatchesSource(modelDir, source, options);
        Assert.Contains(messages, m => m.StartsWith("quantizing model.layers.0.mlp.up_proj [128×64] nf4 … ", StringComparison.Ordinal));
        Assert.True(File.Exists(Path.Combine(modelDir, "tokenizer.json")));
        Assert.True(File.Exists(Path.Combine(modelDir, "generation_config.json")));

        JsonObject config = JsonNode.Parse(File.ReadAllText(Path.Combine(modelDir, "config.json")))!.AsObject();
        JsonObject qc = config["quantization_config"]!.AsObject();
        Assert.Equal("bitsandbytes", qc["quant_method"]!.GetValue<string>());
        Assert.True(qc["load_in_4bit"]!.GetValue<bool>());
        Assert.Equal("nf4", qc["bnb_4bit_quant_type"]!.GetValue<string>());
        Assert.True(qc["bnb_4bit_use_double_quant"]!.GetValue<bool>());
        Assert.Equal(["lm_head", "embed_tokens"], qc["llm_int8_skip_modules"]!.AsArray().Select(n => n!.GetValue<string>()));
        Assert.Equal("LlamaForCausalLM", config["architectures"]![0]!.GetValue<string>()); // source fields kept

        WeightsManifest manifest = WeightsManifest.Read(Path.Combine(output, "tiny.qlora.json"));
        Assert.Equal("tiny", manifest.Model);
        Assert.Equal(source.Count, manifest.Tensors.Count);
        ManifestTensor q = manifest.Tensors["model.layers.1.self_attn.k_proj.weight"];
        Assert.Equal([32L, 64], q.Shape);
        Assert.Equal("nf4", q.Stored);
        Assert.Equal(64, q.BlockSize);
        Assert.True(q.DoubleQuant);
        Assert.Equal(Convert.ToHexStringLower(System.IO.Hashing.XxHash128.Hash(source["model.layers.1.self_attn.k_proj.weight"])), q.SourceXxh3);
        Assert.Null(q.SourceSha256);
        Assert.Equal("bf16", manifest.Tensors["lm_head.weight"].Stored);
        Assert.Equal(64, manifest.Config["hidden_size"]!.GetValue<int>());
        Assert.Empty(manifest.Tied);
        Assert.DoesNotContain(Directory.GetDirectories(output), d => Path.GetFileName(d).StartsWith('.'));
    }

    [Theory]
    [InlineData("nf4", 64, true)]
    [InlineData("fp4", 128, false)]
    [InlineData("none", 64, false)]
    public void TheHeaderFitsItsReservationSoTheFileIsWrittenOnce(string type, int blockSize, bool doubleQuant)
    {
        // A header that outgrew the reserved space costs a second copy of the whole output (it did: 5 entries per
        // quantized tensor against 400 bytes reserved). The reservation must hold every layout's real header.
        string src = TempDir(), output = TempDir();
        TinyCheckpoint.Write(src);
        QuantizationOptions? options = type == "none" ? null : new QuantizationOptions(type == "nf4" ? QuantType.Nf4 : QuantType.Fp4, blockSize, doubleQuant);
        WeightsJob job = Job(src, output, options);
        using (SourceSet set = SourceSet.Open(job.Sources))
        {
            (int header, long data) = WeightsQuantizer.OutputSize(set.Tensors, job);
            string modelDir = new WeightsQuantizer(_ => { }).Run(job);
            using SafeTensorsFile file = SafeTensorsFile.Open(Path.Combine(modelDir, "model.safetensors"));
            Assert.Equal((header + 7) / 8 * 8, file.HeaderLength);          // the reserved space, padded: not regrown
            long written = new FileInfo(file.Path).Length - 8 - file.HeaderLength;
            Assert.InRange(written, data - (file.Tensors.Count * 600L), data); // the preallocation estimate bounds the data
        }
    }

    [Fact]
    public void LoftQAdjustsTheBaseAndWritesTheInitialAdapterThatBringsItCloserToTheWeights()
    {
        string src = TempDir(), output = TempDir();
        Dictionary<string, byte[]> source = TinyCheckpoint.Write(src);
        var options = new QuantizationOptions();
        string modelDir = new WeightsQuantizer(_ => { }).Run(Job(src, output, options) with { LoftQ = new LoftQJob(Rank: 8, Alpha: 16, Iterations: 2) });

        var adapter = QLoRA.Core.Peft.LoraAdapter.Load(Path.Combine(modelDir, LoftQJob.AdapterFolder));
        Assert.Equal(14, adapter.Modules.Count); // every quantized projection; lm_head and the embeddings are kept dense
        Assert.Equal(8, adapter.Config.R);
        Assert.Equal(2.0, adapter.Config.ScalingOf("model.layers.0.mlp.up_proj"));
        using SafeTensorsFile file = SafeTensorsFile.Open(Path.Combine(modelDir, "model.safetensors"));
        foreach (string module in new[] { "model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj" })
        {
            string name = module + ".weight";
            IReadOnlyList<long> shape = BnbFourBitTensor.Read(file, name).State.Shape;
            float[] w = new TensorData(DType.BF16, shape, source[name]).ToSingle();
            float[] adjusted = BnbFourBitTensor.Read(file, name).DequantizeToSingle();
            float[] plain = QuantizedTensor.Quantize(source[name], DType.BF16, shape, options, name).DequantizeToSingle();
            QLoRA.Core.Peft.LoraModuleWeights m = adapter.Modules[module];
            float[] merged = QLoRA.Core.Peft.LoraMerger.AddDelta(adjusted, m, 2.0);
            double loftQ = Math.Sqrt(w.Zip(merged).Sum(p => Math.Pow(p.First - p.Second, 2)));
            double zeroB = Math.Sqrt(w.Zip(plain).Sum(p => Math.Pow(p.First - p.Second, 2)));
            Assert.True(loftQ < 0.97 * zeroB, $"{module}: ‖W − (Q + s·BA)‖ {loftQ} vs ‖W − Q‖ {zeroB}");
        }

    }

    [Fact]
    public void ShardedIndexFp4AndPlainAbsmaxWork()
    {
        string src = TempDir(), output = TempDir();
        Dictionary<string, byte[]> source = TinyCheckpoint.Write(src, sharded: true);
        var options = new QuantizationOptions(QuantType.Fp4, 128, DoubleQuant: false);
        string modelDir = new WeightsQuantizer(_ => { }).Run(Job(src, output, options, [Path.Combine(src, SafeTensorsIndex.FileName)]));
        AssertFolderMatchesSource(modelDir, source, options);
    }

    [Fact]
    public void QuantTypeNoneCopiesEverythingAndWritesNoQuantizationConfig()
    {
        string src = TempDir(), output = TempDir();
        Dictionary<string, byte[]> source = TinyCheckpoint.Write(src);
        string modelDir = new WeightsQuantizer(_ => { }).Run(Job(src, output, null));
        using SafeTensorsFile file = SafeTensorsFile.Open(Path.Combine(modelDir, "model.safetensors"));
        Assert.All(source, t => Assert.Equal(t.Value, file.GetBytes(t.Key).ToArray()));
        Assert.Null(JsonNode.Parse(File.ReadAllText(Path.Combine(modelDir, "config.json")))!["quantization_config"]);
    }

    [Fact]
    public void UnsupportedDtypesAndWriteFailuresHaveTheirCodes()
    {
        string src = TempDir();
        TinyCheckpoint.Write(src);
        var entries = new List<(SafeTensorSpec, ReadOnlyMemory<byte>)>();
        using (SafeTensorsFile file = SafeTensorsFile.Open(Path.Combine(src, "model.safetensors")))
        {
            foreach (SafeTensorInfo info in file.Tensors)
            {
                // One projection stored as int16 (same byte size as bf16): a linear weight that cannot be quantized.
                DType dtype = info.Name == "model.layers.0.mlp.up_proj.weight" ? DType.I16 : info.Dtype;
                entries.Add((new SafeTensorSpec(info.Name, dtype, info.Shape), file.GetBytes(info.Name).ToArray()));
            }
        }

        SafeTensorsWriter.Save(Path.Combine(src, "model.safetensors"), entries);
        var e = Assert.Throws<WeightsBuildException>(() => new WeightsQuantizer(_ => { }).Run(Job(src, TempDir(), new())));
        Assert.Equal("QLR1003", e.Code);
        Assert.Contains("'model.layers.0.mlp.up_proj.weight' is I16", e.Message);

        // A file where the output folder should go: writing fails with QLR1006 and names the destination.
        string clean = TempDir();
        TinyCheckpoint.Write(clean);
        string blocked = Path.Combine(TempDir(), "not-a-folder");
        File.WriteAllText(blocked, "in the way");
        e = Assert.Throws<WeightsBuildException>(() => new WeightsQuantizer(_ => { }).Run(Job(clean, blocked, new())));
        Assert.Equal("QLR1006", e.Code);
        Assert.Contains("not-a-folder", e.File);
    }

    [Fact]
    public void NonFiniteWeightsAreAnErrorNamingTheTensorAndElement()
    {
        string src = TempDir(), output = TempDir();
        TinyCheckpoint.Write(src);
        // Rewrite one projection with a NaN in it.
        var entries = new List<(SafeTensorSpec, ReadOnlyMemory<byte>)>();
        using (SafeTensorsFile file = SafeTensorsFile.Open(Path.Combine(src, "model.safetensors")))
        {
            foreach (SafeTensorInfo info in file.Tensors)
            {
                byte[] bytes = file.GetBytes(info.Name).ToArray();
                if (info.Name == "model.layers.1.mlp.gate_proj.weight")
                {
                    BitConverter.TryWriteBytes(bytes.AsSpan(2 * 77), (ushort)0x7FC0); // bf16 NaN at element 77
                }

                entries.Add((new SafeTensorSpec(info.Name, info.Dtype, info.Shape), bytes));
            }
        }

        SafeTensorsWriter.Save(Path.Combine(src, "model.safetensors"), entries);
        var e = Assert.Throws<WeightsBuildException>(() => new WeightsQuantizer(_ => { }).Run(Job(src, output, new())));
        Assert.Equal("QLR1008", e.Code);
        Assert.Contains("'model.layers.1.mlp.gate_proj.weight' holds NaN at element 77", e.Message);
        Assert.Empty(Directory.GetFileSystemEntries(output));
    }

    [Theory]
    [InlineData("lm_head", "lm_head", true)]
    [InlineData("model.layers.0.mlp.down_proj", "down_proj", true)]
    [InlineData("model.layers.0.mlp.down_proj", "model.layers.0", true)]
    [InlineData("model.layers.10.mlp.down_proj", "model.layers.1", false)]
    [InlineData("model.layers.0.mlp.down_proj", "up_proj", false)]
    [InlineData("model.layers.0.mlp.down_proj", "mlp", true)]
    public void KeepMatchesModulesAsTransformersSkipModulesDo(string module, string keep, bool kept)
    {
        Assert.Equal(kept, WeightsQuantizer.IsKept(module, [keep]));
    }

    [Fact]
    public void ErrorsCarryCodesAndFilesAndLeaveNothingBehind()
    {
        string src = TempDir();
        TinyCheckpoint.Write(src);
        string output = TempDir();

        var e = Assert.Throws<WeightsBuildException>(() => new WeightsQuantizer(_ => { }).Run(Job(src, output, new(), [Path.Combine(src, "missing.safetensors")])));
        Assert.Equal("QLR1001", e.Code);

        File.WriteAllText(Path.Combine(src, "config.json"), TinyCheckpoint.ConfigJson(layers: 1));
        e = Assert.Throws<WeightsBuildException>(() => new WeightsQuantizer(_ => { }).Run(Job(src, output, new())));
        Assert.Equal("QLR1005", e.Code);
        Assert.Contains("model.layers.1.", e.Message);

        File.WriteAllText(Path.Combine(src, "config.json"), "{\"model_type\": \"gpt2\"}");
        e = Assert.Throws<WeightsBuildException>(() => new WeightsQuantizer(_ => { }).Run(Job(src, output, new())));
        Assert.Equal("QLR1004", e.Code);

        File.WriteAllText(Path.Combine(src, "config.json"), TinyCheckpoint.ConfigJson());
        byte[] bytes = File.ReadAllBytes(Path.Combine(src, "model.safetensors"));
        File.WriteAllBytes(Path.Combine(src, "model.safetensors"), bytes[..(bytes.Length - 10)]);
        e = Assert.Throws<WeightsBuildException>(() => new WeightsQuantizer(_ => { }).Run(Job(src, output, new())));
        Assert.Equal("QLR1002", e.Code);
        Assert.Equal(Path.Combine(src, "model.safetensors"), e.File);
        Assert.Empty(Directory.GetFileSystemEntries(output));
    }

    [Fact]
    public void SourceHashIsXxh128InItsCanonicalHexForm()
    {
        // XXH3-128 of the empty input, the reference implementation's published value (big-endian hex).
        string dir = TempDir();
        string path = Path.Combine(dir, "empty.safetensors");
        QLoRA.Core.SafeTensors.SafeTensorsWriter.Save(path, [(new QLoRA.Core.SafeTensors.SafeTensorSpec("e", QLoRA.Core.DType.U8, [0]), ReadOnlyMemory<byte>.Empty),
            (new QLoRA.Core.SafeTensors.SafeTensorSpec("big", QLoRA.Core.DType.U8, [(1 << 26) + 77]), Enumerable.Range(0, (1 << 26) + 77).Select(i => (byte)(i * 31 + (i >> 9))).ToArray())]);
        using var file = QLoRA.Core.SafeTensors.SafeTensorsFile.Open(path);
        Assert.Equal("99aa06d3014798d86001c324468d497f", WeightsQuantizer.Xxh3(file, file.GetInfo("e")));
        // Streamed in 64 MiB slices, the same as hashing the whole tensor at once.
        Assert.Equal(Convert.ToHexStringLower(System.IO.Hashing.XxHash128.Hash(file.GetBytes("big"))), WeightsQuantizer.Xxh3(file, file.GetInfo("big")));
    }

    [Fact]
    public void ManifestsWithTheOlderSha256FieldStillLoad()
    {
        string path = Path.Combine(TempDir(), "old.qlora.json");
        File.WriteAllText(path, """{"version": 1, "model": "old", "config": {}, "tied": [], "tensors": {"w": {"shape": [2, 64], "stored": "nf4", "blocksize": 64, "double_quant": true, "source_sha256": "ab12"}}}""");
        var m = WeightsManifest.Read(path);
        Assert.Equal("ab12", m.Tensors["w"].SourceSha256);
        Assert.Equal("", m.Tensors["w"].SourceXxh3);
    }
}
