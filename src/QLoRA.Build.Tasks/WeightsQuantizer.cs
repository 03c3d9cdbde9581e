using System.Security.Cryptography;
using System.Text.Json;
using System.Text.Json.Nodes;
using QLoRA.Core;
using QLoRA.Core.BitsAndBytes;
using QLoRA.Core.HuggingFace;
using QLoRA.Core.Manifest;
using QLoRA.Core.Peft;
using QLoRA.Core.Quantization;
using QLoRA.Core.SafeTensors;

namespace QLoRA.Build.Tasks;

/// <summary>What to quantize and where: one model (one OutputName) of a QLoRAWeights item group.</summary>
/// <param name="Sources">The model's .safetensors files, or its model.safetensors.index.json.</param>
/// <param name="ConfigPath">Its config.json.</param>
/// <param name="OutputName">Folder and manifest name.</param>
/// <param name="OutputRoot">Folder receiving <c>&lt;OutputName&gt;/</c> and <c>&lt;OutputName&gt;.qlora.json</c>.</param>
/// <param name="Quantization">4-bit options, or null to copy every tensor unchanged (QuantType none).</param>
/// <param name="Keep">Modules left unquantized, matched as transformers matches <c>llm_int8_skip_modules</c>.</param>
public sealed record WeightsJob(IReadOnlyList<string> Sources, string ConfigPath, string OutputName, string OutputRoot, QuantizationOptions? Quantization, IReadOnlyList<string> Keep)
{
    /// <summary>LoftQ on every quantized linear weight, or null for plain quantization.</summary>
    public LoftQJob? LoftQ { get; init; }

    /// <summary>Write the weights manifest (&lt;OutputName&gt;.qlora.json) beside the folder, for the generator's checks.</summary>
    public bool WriteManifest { get; init; } = true;
}

/// <summary>LoftQ at build time: rank, lora_alpha and alternations; the adapter goes to <c>loftq_init/</c> in the model folder.</summary>
public sealed record LoftQJob(int Rank, double Alpha, int Iterations)
{
    /// <summary>The adapter folder's name inside the model folder.</summary>
    public const string AdapterFolder = "loftq_init";
}

/// <summary>
/// Turns a Hugging Face checkpoint into a pre-quantized, HF-loadable folder: safetensors in the bitsandbytes 4-bit
/// layout, config.json with a bitsandbytes quantization_config, tokenizer and generation files, and the weights
/// manifest. Streams tensor by tensor from memory-mapped sources in bounded chunks; writes into a temporary folder
/// that replaces the output only when complete. Errors are <see cref="WeightsBuildException"/>s with QLR codes.
/// </summary>
public sealed class WeightsQuantizer(Action<string> progress)
{
    /// <summary>Files copied from beside the config when present.</summary>
    public static IReadOnlyList<string> CompanionFiles => HuggingFaceFolder.CompanionFiles;

    // Values per quantization chunk: bounds memory per tensor (a multiple of every block size).
    private const int ChunkValues = 1 << 24;

    /// <summary>Runs the job; returns the model folder.</summary>
    /// <exception cref="WeightsBuildException">Any failure, with its code and file; nothing partial is left behind.</exception>
    public string Run(WeightsJob job)
    {
        string outputRoot = Path.GetFullPath(job.OutputRoot);
        string finalDir = Path.Combine(outputRoot, job.OutputName);
        string manifestPath = Path.Combine(outputRoot, job.OutputName + ".qlora.json");
        HfModelConfig config = LoadConfig(job.ConfigPath);
        using SourceSet source = SourceSet.Open(job.Sources);
        CheckShapes(source, config);

        string tempDir = Path.Combine(outputRoot, $".{job.OutputName}.{Guid.NewGuid():N}.tmp");
        try
        {
            Directory.CreateDirectory(tempDir);
            Dictionary<string, ManifestTensor> tensors = WriteTensors(source, job, Path.Combine(tempDir, "model.safetensors"));
            WriteConfig(config, job, Path.Combine(tempDir, "config.json"));
            CopyCompanions(job, tempDir);
            ReplaceDirectory(tempDir, finalDir);
            var tied = config.TieWordEmbeddings && !source.Contains("lm_head.weight") ? new[] { "lm_head.weight" } : [];
            if (job.WriteManifest)
            {
                var manifest = new WeightsManifest(job.OutputName, ManifestConfig(config), tied, tensors);
                AtomicFile.WriteAllText(manifestPath, manifest.ToJson());
            }
            return finalDir;
        }
        catch (IOException e) when (e is not FileNotFoundException)
        {
            throw new WeightsBuildException(BuildErrorCodes.WriteFailed, finalDir, $"writing the quantized weights failed: {e.Message}", e);
        }
        catch (UnauthorizedAccessException e)
        {
            throw new WeightsBuildException(BuildErrorCodes.WriteFailed, finalDir, $"writing the quantized weights failed: {e.Message}", e);
        }
        finally
        {
            if (Directory.Exists(tempDir))
            {
                Directory.Delete(tempDir, recursive: true);
            }
        }
    }

    private static HfModelConfig LoadConfig(string path)
    {
        string full = Path.GetFullPath(path);
        if (!File.Exists(full))
        {
            throw new WeightsBuildException(BuildErrorCodes.MissingFile, full, "config.json not found: set the QLoRAWeights item's Config metadata to the model's config.json");
        }

        try
        {
            return HfModelConfig.Load(full);
        }
        catch (HfConfigException e)
        {
            throw new WeightsBuildException(BuildErrorCodes.InvalidConfig, e.FilePath, e.Message, e);
        }
    }

    private static void CheckShapes(SourceSet source, HfModelConfig config)
    {
        foreach ((SafeTensorsFile file, SafeTensorInfo info) in source.Tensors)
        {
            long[]? expected = LlamaTensorShapes.Expected(config, info.Name, out string? problem);
            if (problem is not null)
            {
                throw new WeightsBuildException(BuildErrorCodes.ConfigMismatch, file.Path, $"tensor '{info.Name}': {problem} in {config.SourcePath}");
            }

            if (expected is not null && !expected.SequenceEqual(info.Shape))
            {
                throw new WeightsBuildException(BuildErrorCodes.ConfigMismatch, file.Path, $"tensor '{info.Name}' has shape {info.ShapeText} but {config.SourcePath} implies [{string.Join(", ", expected)}]");
            }
        }
    }

    /// <summary>True when transformers would leave <paramref name="module"/> unconverted for this skip list.</summary>
    public static bool IsKept(string module, IReadOnlyList<string> keep) =>
        keep.Any(k => module == k || module.EndsWith("." + k, StringComparison.Ordinal) || module.StartsWith(k + ".", StringComparison.Ordinal) || module.Contains("." + k + ".", StringComparison.Ordinal));

    private static bool ShouldQuantize(SafeTensorInfo info, WeightsJob job, out string module)
    {
        module = info.Name.EndsWith(".weight", StringComparison.Ordinal) ? info.Name[..^".weight".Length] : info.Name;
        string last = module[(module.LastIndexOf('.') + 1)..];
        bool linearWeight = info.Shape.Count == 2 && info.Name.EndsWith(".weight", StringComparison.Ordinal) && !last.Contains("embed", StringComparison.Ordinal);
        return job.Quantization is not null && linearWeight && !IsKept(module, job.Keep);
    }

    // Source bytes quantized ahead of the writer: enough to keep every core busy while the writer copies the large
    // unquantized tensors (embeddings, lm_head) that come first; each holds packed codes, a quarter of its bf16 size.
    private const long BytesInFlight = 128L << 20;

    // Bytes per slice when streaming a tensor (hash and copy): large enough for few calls, small enough to stay in cache
    // between hashing a slice and writing it.
    private const int SliceBytes = 1 << 22;

    /// <summary>
    /// Writes every tensor in file order and returns the manifest entries. Per tensor, the source bytes are read once
    /// per consumer: a quantized tensor is hashed (XXH3-128) and quantized by a task started ahead of the writer into a
    /// reused buffer; a copied one is hashed slice by slice as the writer copies it. The output file is preallocated
    /// at its final size and its header space reserved from the names, so it is written front to back exactly once.
    /// </summary>
    private Dictionary<string, ManifestTensor> WriteTensors(SourceSet source, WeightsJob job, string path)
    {
        var tensors = source.Tensors;
        foreach ((SafeTensorsFile file, SafeTensorInfo info) in tensors)
        {
            if (ShouldQuantize(info, job, out _) && !info.Dtype.IsQuantizableFloat())
            {
                throw new WeightsBuildException(BuildErrorCodes.UnsupportedDtype, file.Path, $"tensor '{info.Name}' is {info.Dtype}; only F32, BF16 and F16 weights can be quantized (or list the module in Keep)");
            }
        }

        var manifest = new Dictionary<string, ManifestTensor>(StringComparer.Ordinal);
        (int header, long data) = OutputSize(tensors, job);
        // Build outputs are regenerated on demand: no fsync, the rename alone keeps readers from partial files.
        using var writer = new SafeTensorsAppendWriter(path, header, durable: false, expectedDataBytes: data);
        var buffers = new System.Collections.Concurrent.ConcurrentBag<byte[]>();
        var pending = new Task<(QuantizedTensor Tensor, byte[] Buffer, string Hash)>?[tensors.Count];
        var loftQAdapters = job.LoftQ is null ? null : new System.Collections.Concurrent.ConcurrentDictionary<string, LoraModuleWeights>(StringComparer.Ordinal);
        void StartAhead(int from)
        {
            long inFlight = 0;
            for (int i = from; i < tensors.Count && inFlight < BytesInFlight; i++)
            {
                (SafeTensorsFile file, SafeTensorInfo info) = tensors[i];
                if (!ShouldQuantize(info, job, out _) || info.ByteLength > int.MaxValue)
                {
                    continue;
                }

                inFlight += info.ByteLength;
                pending[i] ??= Task.Run(() => HashAndQuantize(file, info, job.Quantization!, buffers, job.LoftQ, loftQAdapters));
            }
        }

        try
        {
            for (int index = 0; index < tensors.Count; index++)
            {
                StartAhead(index);
                (SafeTensorsFile file, SafeTensorInfo info) = tensors[index];
                if (ShouldQuantize(info, job, out _))
                {
                    QuantizationOptions options = job.Quantization!;
                    progress($"quantizing {info.Name[..^".weight".Length]} [{string.Join("×", info.Shape)}] {options.Type.ToBnbName()} … {index + 1}/{tensors.Count}");
                    string hash;
                    if (pending[index] is { } quantizing)
                    {
                        (QuantizedTensor quantized, byte[] buffer, hash) = Await(quantizing, file, info);
                        pending[index] = null;
                        foreach ((SafeTensorSpec spec, ReadOnlyMemory<byte> bytes) in BnbFourBitTensor.Entries(info.Name, quantized))
                        {
                            writer.Add(spec, bytes.Span);
                        }

                        if (buffer.Length > 0)
                        {
                            buffers.Add(buffer);
                        }
                    }
                    else if (job.LoftQ is not null)
                    {
                        throw new WeightsBuildException(BuildErrorCodes.InvalidMetadata, file.Path, $"tensor '{info.Name}' is over 2 GiB: LoftQ needs it in memory; quantize it without LoftQ or list the module in Keep");
                    }
                    else
                    {
                        hash = Xxh3(file, info);
                        QuantizeTensor(file, info, options, writer); // over 2 GiB: streamed in chunks instead
                    }

                    manifest[info.Name] = new ManifestTensor(info.Shape, options.Type.ToBnbName(), options.BlockSize, options.DoubleQuant, hash);
                }
                else
                {
                    progress($"copying {info.Name} [{string.Join("×", info.Shape)}] {info.Dtype} … {index + 1}/{tensors.Count}");
                    writer.Begin(new SafeTensorSpec(info.Name, info.Dtype, info.Shape));
                    var hash = new System.IO.Hashing.XxHash128();
                    for (long offset = 0; offset < info.ByteLength; offset += SliceBytes)
                    {
                        ReadOnlySpan<byte> slice = file.GetBytes(info.Name, offset, (int)Math.Min(SliceBytes, info.ByteLength - offset));
                        hash.Append(slice);
                        writer.Write(slice);
                    }

                    manifest[info.Name] = new ManifestTensor(info.Shape, StoredName(info.Dtype), null, null, Convert.ToHexStringLower(hash.GetCurrentHash()));
                }
            }
        }
        finally
        {
            // On failure, let work already started finish before the sources are unmapped.
            Task.WaitAll([.. pending.Where(t => t is not null).Select(t => (Task)t!.ContinueWith(_ => { }, TaskScheduler.Default))]);
        }

        writer.Commit(new Dictionary<string, string> { ["format"] = "pt", ["qlora.quantized_by"] = "QLoRA.Sdk QuantizeWeights" });
        if (loftQAdapters is not null)
        {
            WriteLoftQAdapter(job, loftQAdapters, Path.Combine(Path.GetDirectoryName(path)!, LoftQJob.AdapterFolder));
        }

        return manifest;
    }

    /// <summary>
    /// The header space to reserve (an upper bound from the names and shapes: a header that outgrew it would cost a
    /// second copy of the whole file) and the data bytes the file will hold (for preallocation; an estimate).
    /// </summary>
    internal static (int HeaderBytes, long DataBytes) OutputSize(IReadOnlyList<(SafeTensorsFile File, SafeTensorInfo Info)> tensors, WeightsJob job)
    {
        // Per entry: the quoted name, dtype, shape and two offsets of up to 20 digits each, with JSON punctuation.
        static long Entry(int nameLength, int dims) => nameLength + 80 + (21 * dims);
        long header = 256; // metadata and braces
        long data = 0;
        foreach ((_, SafeTensorInfo info) in tensors)
        {
            if (ShouldQuantize(info, job, out _))
            {
                QuantizationOptions q = job.Quantization!;
                long values = info.ElementCount;
                long blocks = BlockwiseLayout.BlockCount(values, q.BlockSize);
                int name = System.Text.Encoding.UTF8.GetByteCount(info.Name);
                // weight, absmax, quant_map, the quant_state JSON (name + ".quant_state.bitsandbytes__nf4"), and with
                // double quantization nested_absmax and nested_quant_map.
                header += Entry(name, 2) + Entry(name + 8, 1) + Entry(name + 11, 1) + Entry(name + 32, 1);
                header += q.DoubleQuant ? Entry(name + 15, 1) + Entry(name + 18, 1) : 0;
                long absmaxBytes = q.DoubleQuant ? blocks + (4 * BlockwiseLayout.BlockCount(blocks, BlockwiseLayout.NestedBlockSize)) + (256 * 4) : 4 * blocks;
                data += BlockwiseLayout.PackedByteCount(values) + absmaxBytes + (16 * 4) + 512;
            }
            else
            {
                header += Entry(System.Text.Encoding.UTF8.GetByteCount(info.Name), info.Shape.Count);
                data += info.ByteLength;
            }
        }

        return ((int)Math.Min(header, 100_000_000), data);
    }

    private static (QuantizedTensor Tensor, byte[] Buffer, string Hash) HashAndQuantize(SafeTensorsFile file, SafeTensorInfo info, QuantizationOptions options, System.Collections.Concurrent.ConcurrentBag<byte[]> buffers, LoftQJob? loftQ, System.Collections.Concurrent.ConcurrentDictionary<string, LoraModuleWeights>? adapters)
    {
        string hash = Xxh3(file, info);
        if (loftQ is not null)
        {
            // LoftQ: the base is quantize(W − s·B·A) after the alternations, and B, A are the initial adapter.
            int outFeatures = checked((int)info.Shape[0]), inFeatures = checked((int)info.Shape[1]);
            int rank = Math.Min(loftQ.Rank, Math.Min(outFeatures, inFeatures));
            float[] weight = new TensorData(info.Dtype, info.Shape, file.GetBytes(info.Name).ToArray()).ToSingle();
            LoftQ.Result result = LoftQ.Initialize(weight, outFeatures, inFeatures, rank, loftQ.Alpha / rank, options, loftQ.Iterations, info.Name);
            string module = info.Name[..^".weight".Length];
            adapters![module] = new LoraModuleWeights(module, TensorData.FromSingle(result.A, rank, inFeatures), TensorData.FromSingle(result.B, outFeatures, rank));
            return (result.Base, [], hash);
        }

        int packedBytes = checked((int)BlockwiseLayout.PackedByteCount(info.ElementCount));
        // Reused buffers: a fresh array per tensor costs a page fault per 4 KiB (about 1 GB/s here), more than quantizing.
        if (!buffers.TryTake(out byte[]? buffer) || buffer.Length < packedBytes)
        {
            buffer = GC.AllocateUninitializedArray<byte>(packedBytes);
        }

        var absmax = new float[BlockwiseLayout.BlockCount(info.ElementCount, options.BlockSize)];
        BlockwiseQuantizer.Quantize(file.GetBytes(info.Name), info.Dtype, buffer.AsSpan(0, packedBytes), absmax, options.Type, options.BlockSize, info.Name);
        AbsmaxStatistics stats = options.DoubleQuant && absmax.Length > 0 ? DoubleQuantization.Compress(absmax) : new PlainAbsmax(absmax);
        var state = new QuantState(options.Type, options.BlockSize, info.Shape, info.Dtype, stats);
        return (new QuantizedTensor(buffer.AsMemory(0, packedBytes), state), buffer, hash);
    }

    /// <summary>XXH3-128 of the tensor's bytes as lowercase hex (big-endian, XXH128's canonical form), streamed in slices.</summary>
    internal static string Xxh3(SafeTensorsFile file, SafeTensorInfo info)
    {
        var hash = new System.IO.Hashing.XxHash128();
        for (long offset = 0; offset < info.ByteLength; offset += 1 << 26)
        {
            hash.Append(file.GetBytes(info.Name, offset, (int)Math.Min(1 << 26, info.ByteLength - offset)));
        }

        return Convert.ToHexStringLower(hash.GetCurrentHash());
    }

    private static (QuantizedTensor Tensor, byte[] Buffer, string Hash) Await(Task<(QuantizedTensor, byte[], string)> task, SafeTensorsFile file, SafeTensorInfo info)
    {
        try
        {
            return task.GetAwaiter().GetResult();
        }
        catch (NonFiniteValueException e)
        {
            throw new WeightsBuildException(BuildErrorCodes.NonFiniteWeights, file.Path, $"tensor '{info.Name}' holds {e.Value} at element {e.ElementIndex}; fix the checkpoint or list the module in Keep", e);
        }
    }

    private static string StoredName(DType dtype) => dtype switch
    {
        DType.BF16 => "bf16",
        DType.F16 => "f16",
        DType.F32 => "f32",
        _ => dtype.SafeTensorsName().ToLowerInvariant(),
    };

    private static void QuantizeTensor(SafeTensorsFile file, SafeTensorInfo info, QuantizationOptions options, SafeTensorsAppendWriter writer)
    {
        long count = info.ElementCount;
        int size = info.Dtype.SizeInBytes();
        var absmax = new float[BlockwiseLayout.BlockCount(count, options.BlockSize)];
        var packed = new byte[ChunkValues / 2];
        var probeState = new QuantState(options.Type, options.BlockSize, info.Shape, info.Dtype, new PlainAbsmax(absmax));
        writer.Begin(BnbFourBitTensor.WeightSpec(info.Name, probeState));
        for (long start = 0; start < count; start += ChunkValues)
        {
            int values = (int)Math.Min(ChunkValues, count - start);
            ReadOnlySpan<byte> bytes = file.GetBytes(info.Name, start * size, values * size);
            int packedLength = (values + 1) / 2;
            try
            {
                BlockwiseQuantizer.Quantize(bytes, info.Dtype, packed.AsSpan(0, packedLength), absmax.AsSpan((int)(start / options.BlockSize)), options.Type, options.BlockSize, info.Name);
            }
            catch (NonFiniteValueException e)
            {
                throw new WeightsBuildException(BuildErrorCodes.NonFiniteWeights, file.Path, $"tensor '{info.Name}' holds {e.Value} at element {start + e.ElementIndex}; fix the checkpoint or list the module in Keep", e);
            }

            writer.Write(packed.AsSpan(0, packedLength));
        }

        AbsmaxStatistics stats = options.DoubleQuant ? DoubleQuantization.Compress(absmax) : new PlainAbsmax(absmax);
        var state = new QuantState(options.Type, options.BlockSize, info.Shape, info.Dtype, stats);
        foreach ((SafeTensorSpec spec, ReadOnlyMemory<byte> data) in BnbFourBitTensor.AuxiliaryEntries(info.Name, state))
        {
            writer.Add(spec, data.Span);
        }
    }

    // The initial adapter as PEFT saves one: every adjusted module, target_modules naming their short names.
    private static void WriteLoftQAdapter(WeightsJob job, IReadOnlyDictionary<string, LoraModuleWeights> modules, string folder)
    {
        LoftQJob loftQ = job.LoftQ!;
        var config = new JsonObject
        {
            ["peft_type"] = "LORA",
            ["task_type"] = "CAUSAL_LM",
            ["r"] = loftQ.Rank,
            ["lora_alpha"] = loftQ.Alpha,
            ["lora_dropout"] = 0.0,
            ["bias"] = "none",
            ["base_model_name_or_path"] = job.OutputName,
            ["target_modules"] = new JsonArray([.. modules.Keys.Select(m => m[(m.LastIndexOf('.') + 1)..]).Distinct().Order(StringComparer.Ordinal).Select(n => (JsonNode?)n)]),
        };
        new LoraAdapter(LoraConfig.Parse(config.ToJsonString(), Path.Combine(folder, LoraConfig.FileName)), modules.Values.OrderBy(m => m.Module, StringComparer.Ordinal)).Save(folder);
    }

    private static void WriteConfig(HfModelConfig config, WeightsJob job, string path)
    {
        var root = (JsonObject)config.Raw.DeepClone();
        if (job.Quantization is QuantizationOptions q)
        {
            root["quantization_config"] = BnbQuantizationConfig.Create(q, job.Keep);
        }

        AtomicFile.WriteAllText(path, root.ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n");
    }

    private static void CopyCompanions(WeightsJob job, string tempDir)
    {
        var folders = new[] { Path.GetDirectoryName(Path.GetFullPath(job.ConfigPath))! }
            .Concat(job.Sources.Select(s => Path.GetDirectoryName(Path.GetFullPath(s))!))
            .Distinct(StringComparer.Ordinal);
        foreach (string name in CompanionFiles)
        {
            string? found = folders.Select(f => Path.Combine(f, name)).FirstOrDefault(File.Exists);
            if (found is not null)
            {
                File.Copy(found, Path.Combine(tempDir, name), overwrite: true);
            }
        }
    }

    private static JsonObject ManifestConfig(HfModelConfig c) => new()
    {
        ["model_type"] = c.ModelType,
        ["hidden_size"] = c.HiddenSize,
        ["intermediate_size"] = c.IntermediateSize,
        ["num_hidden_layers"] = c.NumHiddenLayers,
        ["num_attention_heads"] = c.NumAttentionHeads,
        ["num_key_value_heads"] = c.NumKeyValueHeads,
        ["head_dim"] = c.HeadDim,
        ["vocab_size"] = c.VocabSize,
        ["rms_norm_eps"] = c.RmsNormEps,
        ["max_position_embeddings"] = c.MaxPositionEmbeddings,
        ["rope_theta"] = c.Rope.Theta,
        ["rope_type"] = c.Rope.Type == RopeType.Llama3 ? "llama3" : "default",
        ["tie_word_embeddings"] = c.TieWordEmbeddings,
    };

    private static void ReplaceDirectory(string source, string destination) => HuggingFaceFolder.Replace(source, destination);
}
