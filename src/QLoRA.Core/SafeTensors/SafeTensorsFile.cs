using System.Buffers;
using System.Buffers.Binary;
using System.IO.MemoryMappedFiles;
using System.Runtime.InteropServices;

namespace QLoRA.Core.SafeTensors;

/// <summary>
/// A safetensors file opened by memory-mapping: the header is parsed and fully validated on open; tensor data is
/// never copied — spans point straight into the mapping and pages are read lazily when touched.
/// </summary>
/// <remarks>Spans and memories handed out are valid until the file is disposed. Reading is thread-safe.</remarks>
public sealed unsafe class SafeTensorsFile : IDisposable
{
    private readonly MemoryMappedFile? _map;
    private readonly MemoryMappedViewAccessor? _view;
    private readonly byte* _data;
    private readonly Dictionary<string, SafeTensorInfo> _byName;
    private bool _disposed;

    private SafeTensorsFile(string path, MemoryMappedFile? map, MemoryMappedViewAccessor? view, byte* data, List<SafeTensorInfo> tensors, Dictionary<string, SafeTensorInfo> byName, Dictionary<string, string> metadata, long headerLength)
    {
        Path = path;
        _map = map;
        _view = view;
        _data = data;
        Tensors = tensors;
        Metadata = metadata;
        HeaderLength = headerLength;
        _byName = byName;
    }

    /// <summary>The file's path.</summary>
    public string Path { get; }

    /// <summary>Tensors in header order.</summary>
    public IReadOnlyList<SafeTensorInfo> Tensors { get; }

    /// <summary>The <c>__metadata__</c> entries (empty if absent).</summary>
    public IReadOnlyDictionary<string, string> Metadata { get; }

    /// <summary>Length in bytes of the JSON header (without the 8-byte length prefix).</summary>
    public long HeaderLength { get; }

    /// <summary>Opens and validates <paramref name="path"/>.</summary>
    /// <exception cref="FileNotFoundException">The file does not exist.</exception>
    /// <exception cref="SafeTensorsFormatException">The file violates the format; the message names the file and tensor.</exception>
    public static SafeTensorsFile Open(string path)
    {
        string full = System.IO.Path.GetFullPath(path);
        var stream = new FileStream(full, FileMode.Open, FileAccess.Read, FileShare.Read, 1, FileOptions.RandomAccess);
        long fileLength = stream.Length;
        try
        {
            if (fileLength < 8)
            {
                throw new SafeTensorsFormatException(full, null, $"the file is {fileLength} bytes: too short for the 8-byte header length");
            }

            MemoryMappedFile map = MemoryMappedFile.CreateFromFile(stream, null, 0, MemoryMappedFileAccess.Read, HandleInheritability.None, leaveOpen: false);
            MemoryMappedViewAccessor? view = null;
            try
            {
                view = map.CreateViewAccessor(0, 0, MemoryMappedFileAccess.Read);
                byte* basePointer = null;
                view.SafeMemoryMappedViewHandle.AcquirePointer(ref basePointer);
                byte* start = basePointer + view.PointerOffset;
                try
                {
                    ulong headerLength = BinaryPrimitives.ReadUInt64LittleEndian(new ReadOnlySpan<byte>(start, 8));
                    if (headerLength > (ulong)(fileLength - 8))
                    {
                        throw new SafeTensorsFormatException(full, null, $"the header length {headerLength} exceeds the {fileLength - 8} bytes after the length prefix");
                    }

                    if (headerLength > SafeTensorsHeader.MaxHeaderBytes)
                    {
                        throw new SafeTensorsFormatException(full, null, $"the header length {headerLength} exceeds the {SafeTensorsHeader.MaxHeaderBytes}-byte limit");
                    }

                    if (headerLength < 2)
                    {
                        throw new SafeTensorsFormatException(full, null, $"the header length {headerLength} is too short for a JSON object");
                    }

                    var header = new ReadOnlySpan<byte>(start + 8, (int)headerLength);
                    long bufferLength = fileLength - 8 - (long)headerLength;
                    var (tensors, byName, metadata) = SafeTensorsHeader.Parse(full, header, bufferLength);
                    return new SafeTensorsFile(full, map, view, start + 8 + (long)headerLength, tensors, byName, metadata, (long)headerLength);
                }
                catch
                {
                    view.SafeMemoryMappedViewHandle.ReleasePointer();
                    throw;
                }
            }
            catch
            {
                view?.Dispose();
                map.Dispose();
                throw;
            }
        }
        catch
        {
            stream.Dispose();
            throw;
        }
    }

    /// <summary>True if the file holds a tensor of that name.</summary>
    public bool Contains(string name) => _byName.ContainsKey(name);

    /// <summary>The header entry of a tensor.</summary>
    /// <exception cref="SafeTensorsFormatException">No such tensor.</exception>
    public SafeTensorInfo GetInfo(string name) =>
        _byName.TryGetValue(name, out SafeTensorInfo? info)
            ? info
            : throw new SafeTensorsFormatException(Path, name, "no tensor of this name in the file");

    /// <summary>Looks up a tensor's header entry.</summary>
    public bool TryGetInfo(string name, [System.Diagnostics.CodeAnalysis.NotNullWhen(true)] out SafeTensorInfo? info) =>
        _byName.TryGetValue(name, out info);

    /// <summary>The tensor's bytes, straight from the mapping (no copy).</summary>
    /// <exception cref="SafeTensorsFormatException">No such tensor.</exception>
    /// <exception cref="NotSupportedException">The tensor exceeds 2 GiB; read it in slices with <see cref="GetBytes(string, long, int)"/>.</exception>
    public ReadOnlySpan<byte> GetBytes(string name)
    {
        SafeTensorInfo info = GetInfo(name);
        if (info.ByteLength > int.MaxValue)
        {
            throw new NotSupportedException($"{Path}: '{name}' is {info.ByteLength} bytes; read it in slices of at most 2 GiB.");
        }

        return GetBytes(name, 0, (int)info.ByteLength);
    }

    /// <summary>A slice of the tensor's bytes (no copy).</summary>
    /// <exception cref="ArgumentOutOfRangeException">The slice is outside the tensor.</exception>
    public ReadOnlySpan<byte> GetBytes(string name, long offset, int length)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        SafeTensorInfo info = GetInfo(name);
        // Compared without forming offset + length, which overflows for offsets near long.MaxValue.
        if (offset < 0 || length < 0 || offset > info.ByteLength || length > info.ByteLength - offset)
        {
            throw new ArgumentOutOfRangeException(nameof(offset), $"Slice at {offset} of {length} bytes is outside '{name}' ({info.ByteLength} bytes).");
        }

        return new ReadOnlySpan<byte>(_data + info.Begin + offset, length);
    }

    /// <summary>The tensor's elements as <typeparamref name="T"/> (no copy).</summary>
    /// <exception cref="ArgumentException">The element size of <typeparamref name="T"/> differs from the tensor's dtype.</exception>
    public ReadOnlySpan<T> GetSpan<T>(string name)
        where T : unmanaged
    {
        SafeTensorInfo info = GetInfo(name);
        if (sizeof(T) != info.Dtype.SizeInBytes())
        {
            throw new ArgumentException($"{Path}: '{name}' is {info.Dtype}; {typeof(T).Name} has a different element size.", nameof(T));
        }

        return MemoryMarshal.Cast<byte, T>(GetBytes(name));
    }

    /// <summary>The tensor's bytes as memory (no copy), for APIs that keep a reference; valid until disposal.</summary>
    public ReadOnlyMemory<byte> GetMemory(string name)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        SafeTensorInfo info = GetInfo(name);
        if (info.ByteLength > int.MaxValue)
        {
            throw new NotSupportedException($"{Path}: '{name}' is {info.ByteLength} bytes; read it in slices of at most 2 GiB.");
        }

        return new MappedMemory(_data + info.Begin, (int)info.ByteLength).Memory;
    }

    /// <summary>Unmaps the file.</summary>
    public void Dispose()
    {
        if (_disposed)
        {
            return;
        }

        _disposed = true;
        _view?.SafeMemoryMappedViewHandle.ReleasePointer();
        _view?.Dispose();
        _map?.Dispose();
    }

    private sealed class MappedMemory(byte* pointer, int length) : MemoryManager<byte>
    {
        public override Span<byte> GetSpan() => new(pointer, length);

        public override MemoryHandle Pin(int elementIndex = 0) => new(pointer + elementIndex);

        public override void Unpin()
        {
        }

        protected override void Dispose(bool disposing)
        {
        }
    }
}
