namespace QLoRA.Runtime.Generation;

/// <summary>
/// Finds stop strings in streamed text, also when one is split across tokens: text that could still be the start of a
/// stop string is held back until the next delta shows it is not. The text before the first stop string is emitted;
/// the stop string itself and anything after it are not (OpenAI's stop semantics). Ordinal comparison.
/// </summary>
public sealed class StopStringMatcher
{
    private readonly string[] _stops;
    private string _pending = "";

    /// <summary>A matcher for <paramref name="stops"/> (empty strings are ignored).</summary>
    public StopStringMatcher(IEnumerable<string> stops) => _stops = [.. stops.Where(s => s.Length > 0).Distinct(StringComparer.Ordinal)];

    /// <summary>Whether a stop string was found.</summary>
    public bool Stopped { get; private set; }

    /// <summary>The stop string that was found, if any.</summary>
    public string? Matched { get; private set; }

    /// <summary>Adds a delta; returns the text that is now certain to come before any stop string.</summary>
    public string Add(string delta)
    {
        if (Stopped)
        {
            return "";
        }

        _pending += delta;
        int first = -1;
        foreach (string stop in _stops)
        {
            int at = _pending.IndexOf(stop, StringComparison.Ordinal);
            if (at >= 0 && (first < 0 || at < first))
            {
                first = at;
                Matched = stop;
            }
        }

        if (first >= 0)
        {
            Stopped = true;
            string before = _pending[..first];
            _pending = "";
            return before;
        }

        int hold = 0;
        foreach (string stop in _stops)
        {
            for (int n = Math.Min(stop.Length - 1, _pending.Length); n > hold; n--)
            {
                if (_pending.AsSpan(_pending.Length - n).SequenceEqual(stop.AsSpan(0, n)))
                {
                    hold = n;
                    break;
                }
            }
        }

        string ready = _pending[..^hold];
        _pending = _pending[^hold..];
        return ready;
    }

    /// <summary>Ends the stream: the held-back text (it turned out not to be a stop string).</summary>
    public string Flush()
    {
        string rest = Stopped ? "" : _pending;
        _pending = "";
        return rest;
    }
}
