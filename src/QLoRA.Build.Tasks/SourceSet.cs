using QLoRA.Core;
using QLoRA.Core.SafeTensors;

namespace QLoRA.Build.Tasks;

/// <summary>The tensors of one source checkpoint (files of a glob, or a sharded index), memory-mapped, sorted by name.</summary>
internal sealed class SourceSet : IDisposable
{
    private readonly List<IDisposable> _owned = [];
    private readonly HashSet<string> _names = new(StringComparer.Ordinal);

    private SourceSet()
    {
    }

    /// <summary>Every tensor with the file holding it, ordered by name (deterministic whatever the glob order).</summary>
    public List<(SafeTensorsFile File, SafeTensorInfo Info)> Tensors { get; } = [];

    public bool Contains(string name) => _names.Contains(name);

    /// <exception cref="WeightsBuildException">QLR1001 missing file, QLR1002 corrupt file or index, QLR1009 duplicate tensor.</exception>
    public static SourceSet Open(IReadOnlyList<string> sources)
    {
        var set = new SourceSet();
        try
        {
            foreach (string source in sources.Select(Path.GetFullPath).Distinct(StringComparer.Ordinal))
            {
                if (!File.Exists(source))
                {
                    throw new WeightsBuildException(BuildErrorCodes.MissingFile, source, "weights file not found");
                }

                if (source.EndsWith(".json", StringComparison.OrdinalIgnoreCase))
                {
                    SafeTensorsCheckpoint checkpoint = SafeTensorsCheckpoint.Open(source);
                    set._owned.Add(checkpoint);
                    foreach (string name in checkpoint.TensorNames)
                    {
                        set.Add(checkpoint.FileOf(name), checkpoint.GetInfo(name));
                    }
                }
                else
                {
                    SafeTensorsFile file = SafeTensorsFile.Open(source);
                    set._owned.Add(file);
                    foreach (SafeTensorInfo info in file.Tensors)
                    {
                        set.Add(file, info);
                    }
                }
            }

            set.Tensors.Sort((a, b) => string.CompareOrdinal(a.Info.Name, b.Info.Name));
            return set;
        }
        catch (SafeTensorsFormatException e)
        {
            set.Dispose();
            throw new WeightsBuildException(BuildErrorCodes.CorruptCheckpoint, e.FilePath, e.Message, e);
        }
        catch
        {
            set.Dispose();
            throw;
        }
    }

    private void Add(SafeTensorsFile file, SafeTensorInfo info)
    {
        if (!_names.Add(info.Name))
        {
            string other = Tensors.First(t => t.Info.Name == info.Name).File.Path;
            throw new WeightsBuildException(BuildErrorCodes.DuplicateTensor, file.Path, $"tensor '{info.Name}' is also in {other}; a model's files must not repeat tensors");
        }

        Tensors.Add((file, info));
    }

    public void Dispose()
    {
        foreach (IDisposable d in _owned)
        {
            d.Dispose();
        }

        _owned.Clear();
    }
}
