namespace QLoRA.Core;

/// <summary>
/// A file written under a temporary name beside its destination and renamed over it only on <see cref="Commit"/>,
/// so readers never see a partial file and a failed write leaves nothing behind.
/// </summary>
public sealed class AtomicFile : IDisposable
{
    private readonly FileStream _stream;
    private readonly bool _durable;
    private readonly bool _preallocated;
    private bool _done;

    private AtomicFile(string path, bool durable, long preallocationSize)
    {
        _durable = durable;
        _preallocated = preallocationSize > 0;
        string full = System.IO.Path.GetFullPath(path);
        string? directory = System.IO.Path.GetDirectoryName(full);
        if (directory is not null)
        {
            Directory.CreateDirectory(directory);
        }

        Path = full;
        TempPath = $"{full}.{Guid.NewGuid():N}.tmp";
        // Preallocating (fallocate) a large file up front lets the kernel reserve its blocks once instead of on every
        // write: writing a fresh 256 MB file ran at 0.5–0.8 GB/s without, 2.5 GB/s with.
        _stream = new FileStream(TempPath, new FileStreamOptions
        {
            Mode = FileMode.CreateNew,
            Access = FileAccess.ReadWrite,
            Share = FileShare.None,
            BufferSize = 1 << 20,
            PreallocationSize = preallocationSize,
        });
    }

    /// <summary>The destination path.</summary>
    public string Path { get; }

    /// <summary>The temporary path being written.</summary>
    public string TempPath { get; }

    /// <summary>The stream to write.</summary>
    public FileStream Stream => _stream;

    /// <summary>Starts writing <paramref name="path"/> (creating its directory if needed).</summary>
    /// <param name="path">Destination.</param>
    /// <param name="durable">Flush to the disk before the rename (survives power loss); build outputs that can be
    /// regenerated skip it — the rename alone already keeps readers from ever seeing a partial file.</param>
    /// <param name="preallocationSize">Bytes to reserve on disk up front (0: none); the file's length still grows only
    /// as it is written. Where the file system cannot preallocate, it is not, and writing works as without.</param>
    public static AtomicFile Create(string path, bool durable = true, long preallocationSize = 0) => new(path, durable, Math.Max(0, preallocationSize));

    /// <summary>Writes all bytes atomically.</summary>
    public static void WriteAllBytes(string path, ReadOnlySpan<byte> bytes)
    {
        using AtomicFile file = Create(path);
        file.Stream.Write(bytes);
        file.Commit();
    }

    /// <summary>Writes UTF-8 text (no BOM) atomically.</summary>
    public static void WriteAllText(string path, string text) =>
        WriteAllBytes(path, new System.Text.UTF8Encoding(false).GetBytes(text));

    /// <summary>Flushes to disk and renames the temporary file over the destination.</summary>
    /// <exception cref="InvalidOperationException">Already committed or abandoned.</exception>
    public void Commit()
    {
        if (_done)
        {
            throw new InvalidOperationException($"{Path} was already committed or abandoned.");
        }

        _stream.Flush(flushToDisk: false);
        if (_preallocated)
        {
            _stream.SetLength(_stream.Length); // frees the blocks reserved past the end (kept past EOF until truncated)
        }

        _stream.Flush(flushToDisk: _durable);
        _stream.Dispose();
        File.Move(TempPath, Path, overwrite: true);
        _done = true;
    }

    /// <summary>Deletes the temporary file unless committed.</summary>
    public void Dispose()
    {
        if (_done)
        {
            return;
        }

        _done = true;
        _stream.Dispose();
        try
        {
            File.Delete(TempPath);
        }
        catch (IOException)
        {
            // Best effort: the temp name never collides with a real output.
        }
    }
}
