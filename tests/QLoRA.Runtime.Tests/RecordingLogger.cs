using Microsoft.Extensions.Logging;

namespace QLoRA.Runtime.Tests;

/// <summary>An <see cref="ILogger"/> that keeps every entry with its structured values.</summary>
public sealed class RecordingLogger : ILogger
{
    public sealed record Entry(LogLevel Level, int EventId, string Message, IReadOnlyDictionary<string, object?> Values);

    public List<Entry> Entries { get; } = [];

    public IDisposable? BeginScope<TState>(TState state)
        where TState : notnull => null;

    public bool IsEnabled(LogLevel logLevel) => true;

    public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
    {
        var values = state is IReadOnlyList<KeyValuePair<string, object?>> pairs ? pairs.ToDictionary(p => p.Key, p => p.Value) : [];
        lock (Entries)
        {
            Entries.Add(new Entry(logLevel, eventId.Id, formatter(state, exception), values));
        }
    }
}
