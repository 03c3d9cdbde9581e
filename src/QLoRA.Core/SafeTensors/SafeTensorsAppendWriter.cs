using System.Buffers.Binary;

namespace QLoRA.Core.SafeTensors;

/// <summary>
/// Writes a safetensors file whose tensors are not known in advance: each tensor is declared as it is appended
/// and the header is written last, into space reserved at the start (or, if it outgrew the reservation, by one
/// copy into a fresh file). Like <see cref="SafeTensorsWriter"/>, the file appears only on <see cref="Commit"/>.
/// </summary>
/// <remarks>Used when a tensor's size depends on its content, e.g. a bitsandbytes quant-state JSON.</remarks>
public sealed class SafeTensorsAppendWriter : IDisposable
{
    private readonly AtomicFile _file;
    private readonly int _reserved;
    private readonly bool _durable;
    private readonly List<(SafeTensorSpec Spec, long Length)> _tensors = [];
    private readonly HashSet<string> _names = new(StringComparer.Ordinal);
    private long _remainingInCurrent;

    /// <summary>Starts a file, reserving <paramref name="reservedHeaderBytes"/> (rounded up to 8) for the header.</summary>
    /// <param name="path">Destination.</param>
    /// <param name="reservedHeaderBytes">Space kept for the header.</param>
    /// <param name="durable">Flush to disk before the rename (see <see cref="AtomicFile.Create"/>).</param>
    /// <param name="expectedDataBytes">The tensor bytes expected, if known: the file is preallocated for them.</param>
    public SafeTensorsAppendWriter(string path, int reservedHeaderBytes = 1 << 20, bool durable = true, long expectedDataBytes = 0)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(reservedHeaderBytes);
        ArgumentOutOfRangeException.ThrowIfNegative(expectedDataBytes);
        _reserved = (reservedHeaderBytes + 7) / 8 * 8;
        _durable = durable;
        _file = AtomicFile.Create(path, durable, expectedDataBytes > 0 ? 8 + _reserved + expectedDataBytes : 0);
        _file.Stream.SetLength(8 + _reserved);
        _file.Stream.Position = 8 + _reserved;
    }

    /// <summary>The destination path.</summary>
    public string Path => _file.Path;

    /// <summary>After <see cref="Commit"/>: true when the header did not fit the reservation and the data was copied once more.</summary>
    public bool HeaderOutgrewReservation { get; private set; }

    /// <summary>Bytes of tensor data written so far.</summary>
    public long DataLength { get; private set; }

    /// <summary>Declares the next tensor; its bytes follow through <see cref="Write"/> (a zero-size tensor is complete at once).</summary>
    /// <exception cref="InvalidOperationException">The previous tensor is incomplete, or the name is taken or invalid.</exception>
    public void Begin(SafeTensorSpec spec)
    {
        ArgumentNullException.ThrowIfNull(spec);
        if (_remainingInCurrent != 0)
        {
            throw new InvalidOperationException($"{Path}: '{_tensors[^1].Spec.Name}' is incomplete ({_remainingInCurrent} bytes missing).");
        }

        if (string.IsNullOrEmpty(spec.Name) || spec.Name == SafeTensorsHeader.MetadataKey || !_names.Add(spec.Name))
        {
            throw new InvalidOperationException($"{Path}: tensor name '{spec.Name}' is invalid or already used.");
        }

        long length = spec.ByteLength;
        _tensors.Add((spec, length));
        _remainingInCurrent = length;
    }

    /// <summary>Appends bytes of the tensor begun last.</summary>
    /// <exception cref="InvalidOperationException">More bytes than the tensor holds.</exception>
    public void Write(ReadOnlySpan<byte> data)
    {
        if (data.Length > _remainingInCurrent)
        {
            throw new InvalidOperationException($"{Path}: {data.Length} bytes exceed the {_remainingInCurrent} left in '{(_tensors.Count > 0 ? _tensors[^1].Spec.Name : "?")}'.");
        }

        _file.Stream.Write(data);
        _remainingInCurrent -= data.Length;
        DataLength += data.Length;
    }

    /// <summary>Declares and writes a whole tensor.</summary>
    public void Add(SafeTensorSpec spec, ReadOnlySpan<byte> data)
    {
        Begin(spec);
        if (data.Length != _remainingInCurrent)
        {
            throw new ArgumentException($"Tensor '{spec.Name}' needs {spec.ByteLength} bytes; {data.Length} were given.", nameof(data));
        }

        Write(data);
    }

    /// <summary>Writes the header and moves the file into place.</summary>
    /// <exception cref="InvalidOperationException">The last tensor is incomplete.</exception>
    public void Commit(IReadOnlyDictionary<string, string>? metadata = null)
    {
        if (_remainingInCurrent != 0)
        {
            throw new InvalidOperationException($"{Path}: '{_tensors[^1].Spec.Name}' is incomplete ({_remainingInCurrent} bytes missing).");
        }

        byte[] header = SafeTensorsWriter.BuildHeader(_tensors, metadata, _reserved);
        if (header.Length == _reserved)
        {
            HeaderOutgrewReservation = false;
            WriteHeaderAt(_file.Stream, header);
            _file.Commit();
            return;
        }

        // The header outgrew its reservation: copy the data behind a header of the right size.
        HeaderOutgrewReservation = true;
        using AtomicFile grown = AtomicFile.Create(Path, _durable);
        WriteHeaderAt(grown.Stream, SafeTensorsWriter.BuildHeader(_tensors, metadata));
        _file.Stream.Position = 8 + _reserved;
        _file.Stream.CopyTo(grown.Stream, 1 << 20);
        grown.Commit();
        _file.Dispose();
    }

    /// <summary>Abandons the file unless committed.</summary>
    public void Dispose() => _file.Dispose();

    private static void WriteHeaderAt(Stream stream, byte[] header)
    {
        stream.Position = 0;
        Span<byte> prefix = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(prefix, (ulong)header.Length);
        stream.Write(prefix);
        stream.Write(header);
    }
}
