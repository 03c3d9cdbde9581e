namespace QLoRA.Core.SafeTensors;

/// <summary>
/// A checkpoint of one or more safetensors files seen as one set of tensors: a single <c>.safetensors</c> file,
/// a sharded checkpoint's <c>model.safetensors.index.json</c>, or a folder holding either. Every shard's header is
/// validated on open; tensor data is memory-mapped and read only when touched.
/// </summary>
public sealed class SafeTensorsCheckpoint : IDisposable
{
    private readonly Dictionary<string, string> _shardOf;
    private readonly Dictionary<string, SafeTensorsFile> _open = new(StringComparer.Ordinal);
    private readonly object _gate = new();

    private SafeTensorsCheckpoint(string folder, string? indexPath, Dictionary<string, string> shardOf, IReadOnlyList<string> shards)
    {
        Folder = folder;
        IndexPath = indexPath;
        _shardOf = shardOf;
        ShardFiles = shards;
    }

    /// <summary>The folder holding the files.</summary>
    public string Folder { get; }

    /// <summary>The index file, for sharded checkpoints.</summary>
    public string? IndexPath { get; }

    /// <summary>Shard file names (one for an unsharded checkpoint).</summary>
    public IReadOnlyList<string> ShardFiles { get; }

    /// <summary>All tensor names.</summary>
    public IEnumerable<string> TensorNames => _shardOf.Keys;

    /// <summary>
    /// Opens a checkpoint. A sharded checkpoint is validated as a whole: every shard exists and is a valid
    /// safetensors file, every tensor the index lists is in its shard, and no shard holds a tensor the index omits.
    /// </summary>
    /// <exception cref="FileNotFoundException">Nothing loadable at <paramref name="path"/>.</exception>
    /// <exception cref="SafeTensorsFormatException">A file or the index is malformed or inconsistent.</exception>
    public static SafeTensorsCheckpoint Open(string path)
    {
        string full = Path.GetFullPath(path);
        if (Directory.Exists(full))
        {
            string index = Path.Combine(full, SafeTensorsIndex.FileName);
            string single = Path.Combine(full, "model.safetensors");
            if (File.Exists(index))
            {
                return OpenIndex(index);
            }

            if (File.Exists(single))
            {
                return OpenSingle(single);
            }

            string[] files = Directory.GetFiles(full, "*.safetensors");
            if (files.Length == 1)
            {
                return OpenSingle(files[0]);
            }

            throw new FileNotFoundException($"{full}: no {SafeTensorsIndex.FileName}, model.safetensors or single *.safetensors file in the folder.", full);
        }

        if (!File.Exists(full))
        {
            throw new FileNotFoundException($"{full}: no such file or folder.", full);
        }

        return full.EndsWith(".json", StringComparison.OrdinalIgnoreCase) ? OpenIndex(full) : OpenSingle(full);
    }

    private static SafeTensorsCheckpoint OpenSingle(string file)
    {
        var opened = SafeTensorsFile.Open(file);
        string name = Path.GetFileName(file);
        var shardOf = opened.Tensors.ToDictionary(t => t.Name, _ => name, StringComparer.Ordinal);
        var checkpoint = new SafeTensorsCheckpoint(Path.GetDirectoryName(file)!, null, shardOf, [name]);
        checkpoint._open[name] = opened;
        return checkpoint;
    }

    private static SafeTensorsCheckpoint OpenIndex(string indexPath)
    {
        SafeTensorsIndex index = SafeTensorsIndex.Read(indexPath);
        string folder = Path.GetDirectoryName(indexPath)!;
        var shards = index.WeightMap.Values.Distinct(StringComparer.Ordinal).OrderBy(s => s, StringComparer.Ordinal).ToList();
        var checkpoint = new SafeTensorsCheckpoint(folder, indexPath, new Dictionary<string, string>(index.WeightMap, StringComparer.Ordinal), shards);
        try
        {
            foreach (string shard in shards)
            {
                string shardPath = Path.Combine(folder, shard);
                if (!File.Exists(shardPath))
                {
                    string tensor = index.WeightMap.First(e => e.Value == shard).Key;
                    throw new SafeTensorsFormatException(indexPath, tensor, $"shard '{shard}' does not exist");
                }

                SafeTensorsFile file = checkpoint.Shard(shard);
                foreach (SafeTensorInfo t in file.Tensors)
                {
                    if (!index.WeightMap.TryGetValue(t.Name, out string? listed))
                    {
                        throw new SafeTensorsFormatException(indexPath, t.Name, $"tensor in shard '{shard}' is missing from weight_map");
                    }

                    if (listed != shard)
                    {
                        throw new SafeTensorsFormatException(indexPath, t.Name, $"weight_map places it in '{listed}' but shard '{shard}' holds it");
                    }
                }
            }

            foreach (KeyValuePair<string, string> entry in index.WeightMap)
            {
                if (!checkpoint.Shard(entry.Value).Contains(entry.Key))
                {
                    throw new SafeTensorsFormatException(indexPath, entry.Key, $"weight_map places it in '{entry.Value}', which does not hold it");
                }
            }
        }
        catch
        {
            checkpoint.Dispose();
            throw;
        }

        return checkpoint;
    }

    /// <summary>True if some shard holds the tensor.</summary>
    public bool Contains(string name) => _shardOf.ContainsKey(name);

    /// <summary>The opened file holding <paramref name="name"/>.</summary>
    /// <exception cref="SafeTensorsFormatException">No such tensor.</exception>
    public SafeTensorsFile FileOf(string name) =>
        _shardOf.TryGetValue(name, out string? shard)
            ? Shard(shard)
            : throw new SafeTensorsFormatException(IndexPath ?? Path.Combine(Folder, ShardFiles[0]), name, "no tensor of this name in the checkpoint");

    /// <summary>The header entry of <paramref name="name"/>.</summary>
    public SafeTensorInfo GetInfo(string name) => FileOf(name).GetInfo(name);

    /// <summary>The bytes of <paramref name="name"/> (no copy).</summary>
    public ReadOnlySpan<byte> GetBytes(string name) => FileOf(name).GetBytes(name);

    private SafeTensorsFile Shard(string shard)
    {
        lock (_gate)
        {
            if (!_open.TryGetValue(shard, out SafeTensorsFile? file))
            {
                file = SafeTensorsFile.Open(Path.Combine(Folder, shard));
                _open[shard] = file;
            }

            return file;
        }
    }

    /// <summary>Unmaps every opened shard.</summary>
    public void Dispose()
    {
        lock (_gate)
        {
            foreach (SafeTensorsFile file in _open.Values)
            {
                file.Dispose();
            }

            _open.Clear();
        }
    }
}
