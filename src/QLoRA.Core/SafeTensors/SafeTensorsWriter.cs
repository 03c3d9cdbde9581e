using System.Buffers.Binary;
using System.Text;
using System.Text.Json;

namespace QLoRA.Core.SafeTensors;

/// <summary>
/// Streams a safetensors file: the header (names, dtypes, shapes, offsets, <c>__metadata__</c>) is written up
/// front, then each tensor's bytes in declaration order, in one piece or in chunks. The file is written under a
/// temporary name and appears at its path only on <see cref="Commit"/>; disposing without committing deletes it.
/// </summary>
public sealed class SafeTensorsWriter : IDisposable
{
    private readonly AtomicFile _file;
    private readonly List<(SafeTensorSpec Spec, long Length)> _tensors;
    private int _current;
    private long _writtenInCurrent;

    /// <summary>Starts a file with the given tensors, laid out in the order given.</summary>
    /// <exception cref="ArgumentException">A name is empty, repeated or reserved, or a shape is invalid.</exception>
    public SafeTensorsWriter(string path, IEnumerable<SafeTensorSpec> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        ArgumentNullException.ThrowIfNull(tensors);
        _tensors = [];
        var names = new HashSet<string>(StringComparer.Ordinal);
        foreach (SafeTensorSpec spec in tensors)
        {
            if (string.IsNullOrEmpty(spec.Name) || spec.Name == SafeTensorsHeader.MetadataKey)
            {
                throw new ArgumentException($"'{spec.Name}' is not a valid tensor name.", nameof(tensors));
            }

            if (!names.Add(spec.Name))
            {
                throw new ArgumentException($"Tensor '{spec.Name}' is declared twice.", nameof(tensors));
            }

            if (spec.Shape.Any(d => d < 0))
            {
                throw new ArgumentException($"Tensor '{spec.Name}' has a negative dimension in {string.Join(",", spec.Shape)}.", nameof(tensors));
            }

            _tensors.Add((spec, spec.ByteLength));
        }

        byte[] header = BuildHeader(_tensors, metadata);
        _file = AtomicFile.Create(path);
        try
        {
            Span<byte> prefix = stackalloc byte[8];
            BinaryPrimitives.WriteUInt64LittleEndian(prefix, (ulong)header.Length);
            _file.Stream.Write(prefix);
            _file.Stream.Write(header);
            SkipEmpty();
        }
        catch
        {
            _file.Dispose();
            throw;
        }
    }

    /// <summary>The destination path.</summary>
    public string Path => _file.Path;

    /// <summary>
    /// Appends bytes of tensor <paramref name="name"/>, which must be the first tensor not yet complete; call
    /// repeatedly to stream a large tensor in chunks.
    /// </summary>
    /// <exception cref="InvalidOperationException">Out of order, or more bytes than the tensor holds.</exception>
    public void Write(string name, ReadOnlySpan<byte> data)
    {
        if (data.IsEmpty && _tensors.Any(t => t.Length == 0 && t.Spec.Name == name))
        {
            return; // empty tensors need no bytes and are complete as declared
        }

        if (_current >= _tensors.Count)
        {
            throw new InvalidOperationException($"{Path}: all declared tensors are complete; '{name}' cannot be written.");
        }

        (SafeTensorSpec spec, long length) = _tensors[_current];
        if (spec.Name != name)
        {
            throw new InvalidOperationException($"{Path}: tensors must be written in declaration order; expected '{spec.Name}', got '{name}'.");
        }

        if (_writtenInCurrent + data.Length > length)
        {
            throw new InvalidOperationException($"{Path}: '{name}' holds {length} bytes; {_writtenInCurrent + data.Length} were written.");
        }

        _file.Stream.Write(data);
        _writtenInCurrent += data.Length;
        if (_writtenInCurrent == length)
        {
            _current++;
            _writtenInCurrent = 0;
            SkipEmpty();
        }
    }

    /// <summary>Finishes the file and moves it into place.</summary>
    /// <exception cref="InvalidOperationException">A declared tensor is incomplete.</exception>
    public void Commit()
    {
        if (_current < _tensors.Count)
        {
            throw new InvalidOperationException($"{Path}: tensor '{_tensors[_current].Spec.Name}' is incomplete ({_writtenInCurrent} of {_tensors[_current].Length} bytes).");
        }

        _file.Commit();
    }

    /// <summary>Abandons the file unless committed.</summary>
    public void Dispose() => _file.Dispose();

    /// <summary>
    /// Writes whole tensors in one call, laid out as the reference implementation does (by dtype alignment,
    /// largest first, then by name).
    /// </summary>
    public static void Save(string path, IEnumerable<(SafeTensorSpec Spec, ReadOnlyMemory<byte> Data)> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        var ordered = tensors
            .OrderByDescending(t => t.Spec.Dtype.SizeInBytes())
            .ThenBy(t => t.Spec.Name, StringComparer.Ordinal)
            .ToList();
        using var writer = new SafeTensorsWriter(path, ordered.Select(t => t.Spec), metadata);
        foreach ((SafeTensorSpec spec, ReadOnlyMemory<byte> data) in ordered)
        {
            if (data.Length != spec.ByteLength)
            {
                throw new ArgumentException($"Tensor '{spec.Name}' {string.Join("x", spec.Shape)} {spec.Dtype} needs {spec.ByteLength} bytes; {data.Length} were given.", nameof(tensors));
            }

            writer.Write(spec.Name, data.Span);
        }

        writer.Commit();
    }

    private void SkipEmpty()
    {
        while (_current < _tensors.Count && _tensors[_current].Length == 0)
        {
            _current++;
        }
    }

    // Compact JSON, __metadata__ first, padded with spaces to a multiple of 8 bytes (or to minLength) so the data is aligned.
    internal static byte[] BuildHeader(List<(SafeTensorSpec Spec, long Length)> tensors, IReadOnlyDictionary<string, string>? metadata, int minLength = 0)
    {
        using var buffer = new MemoryStream();
        using (var json = new Utf8JsonWriter(buffer, new JsonWriterOptions { Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping }))
        {
            json.WriteStartObject();
            if (metadata is { Count: > 0 })
            {
                json.WriteStartObject(SafeTensorsHeader.MetadataKey);
                foreach (KeyValuePair<string, string> entry in metadata.OrderBy(e => e.Key, StringComparer.Ordinal))
                {
                    json.WriteString(entry.Key, entry.Value);
                }

                json.WriteEndObject();
            }

            long offset = 0;
            foreach ((SafeTensorSpec spec, long length) in tensors)
            {
                json.WriteStartObject(spec.Name);
                json.WriteString("dtype", spec.Dtype.SafeTensorsName());
                json.WriteStartArray("shape");
                foreach (long d in spec.Shape)
                {
                    json.WriteNumberValue(d);
                }

                json.WriteEndArray();
                json.WriteStartArray("data_offsets");
                json.WriteNumberValue(offset);
                json.WriteNumberValue(offset + length);
                json.WriteEndArray();
                json.WriteEndObject();
                offset += length;
            }

            json.WriteEndObject();
        }

        int padding = (int)((8 - (buffer.Length % 8)) % 8);
        padding = Math.Max(padding, minLength - (int)buffer.Length);
        buffer.Write(Encoding.ASCII.GetBytes(new string(' ', padding)));
        return buffer.ToArray();
    }
}
