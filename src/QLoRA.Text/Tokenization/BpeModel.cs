using System.Collections.Concurrent;
using System.Runtime.InteropServices;
using System.Text;

namespace QLoRA.Text.Tokenization;

/// <summary>
/// Byte-pair encoding as Hugging Face tokenizers runs it: a word starts as one symbol per code point (or per byte
/// token with <c>byte_fallback</c>), then the adjacent pair of lowest merge rank is merged, leftmost first, until no
/// pair has a merge. <c>ignore_merges</c> emits a word that is itself in the vocabulary as one token.
/// </summary>
internal sealed class BpeModel
{
    private const int CacheCapacity = 200_000;
    private const int CachedWordMaxLength = 96;
    private const int NaiveMergeLimit = 48;

    private readonly Dictionary<string, int> _vocab;
    private readonly Dictionary<string, int>.AlternateLookup<ReadOnlySpan<char>> _vocabBySpan;
    private readonly Dictionary<long, long> _merges;     // (left id, right id) → (rank, merged id)
    private readonly string[] _idToToken;
    private readonly int[] _byteFallbackIds;             // byte → id of "<0xXX>", or -1
    private readonly ConcurrentDictionary<string, int[]> _cache = new();
    private readonly ConcurrentDictionary<string, int[]>.AlternateLookup<ReadOnlySpan<char>> _cacheBySpan;

    public BpeModel(Dictionary<string, int> vocab, IReadOnlyList<(string Left, string Right)> merges, string? unkToken,
        bool byteFallback, bool fuseUnk, bool ignoreMerges, string? continuingSubwordPrefix, string? endOfWordSuffix,
        string filePath)
    {
        _vocab = vocab;
        _vocabBySpan = vocab.GetAlternateLookup<ReadOnlySpan<char>>();
        _cacheBySpan = _cache.GetAlternateLookup<ReadOnlySpan<char>>();
        int maxId = -1;
        foreach (var id in vocab.Values)
        {
            if (id < 0) throw new TextFormatException(filePath, "model.vocab", $"negative id {id}");
            maxId = Math.Max(maxId, id);
        }
        _idToToken = new string[maxId + 1];
        foreach (var (token, id) in vocab)
        {
            if (_idToToken[id] is not null)
                throw new TextFormatException(filePath, "model.vocab", $"id {id} is given to both '{_idToToken[id]}' and '{token}'");
            _idToToken[id] = token;
        }

        Prefix = string.IsNullOrEmpty(continuingSubwordPrefix) ? null : continuingSubwordPrefix;
        Suffix = string.IsNullOrEmpty(endOfWordSuffix) ? null : endOfWordSuffix;
        _merges = new Dictionary<long, long>(merges.Count);
        int prefixLength = Prefix?.Length ?? 0;
        for (int rank = 0; rank < merges.Count; rank++)
        {
            var (left, right) = merges[rank];
            if (!vocab.TryGetValue(left, out int a) || !vocab.TryGetValue(right, out int b))
                throw new TextFormatException(filePath, $"model.merges[{rank}]", $"merge '{left} {right}' uses a token missing from the vocabulary");
            string merged = left + (prefixLength > 0 && right.StartsWith(Prefix!, StringComparison.Ordinal) ? right[prefixLength..] : right);
            if (!vocab.TryGetValue(merged, out int m))
                throw new TextFormatException(filePath, $"model.merges[{rank}]", $"merge '{left} {right}' yields '{merged}', which is not in the vocabulary");
            _merges[Key(a, b)] = Key(rank, m);   // a repeated merge keeps its last rank, as the Rust library's map does
        }

        if (unkToken is not null)
        {
            if (!vocab.TryGetValue(unkToken, out int unk))
                throw new TextFormatException(filePath, "model.unk_token", $"unk_token '{unkToken}' is not in the vocabulary");
            UnkId = unk;
        }
        else
        {
            UnkId = -1;
        }
        ByteFallback = byteFallback;
        FuseUnk = fuseUnk;
        IgnoreMerges = ignoreMerges;
        _byteFallbackIds = new int[256];
        for (int b = 0; b < 256; b++)
            _byteFallbackIds[b] = vocab.TryGetValue($"<0x{b:X2}>", out int id) ? id : -1;
    }

    public int UnkId { get; }
    public bool ByteFallback { get; }
    public bool FuseUnk { get; }
    public bool IgnoreMerges { get; }
    public string? Prefix { get; }
    public string? Suffix { get; }

    /// <summary>Number of vocabulary entries (the Rust library's <c>get_vocab_size</c>).</summary>
    public int VocabularyCount => _vocab.Count;

    /// <summary>Number of ids (highest id + 1).</summary>
    public int VocabularySize => _idToToken.Length;

    public string? IdToToken(int id) => (uint)id < (uint)_idToToken.Length ? _idToToken[id] : null;

    public bool TryGetId(ReadOnlySpan<char> token, out int id) => _vocabBySpan.TryGetValue(token, out id);

    /// <summary>
    /// Tokenizes one pre-token. Appends ids and, per token, the [start, end) char span within <paramref name="word"/>.
    /// </summary>
    public void Tokenize(ReadOnlySpan<char> word, List<int> ids, List<(int Start, int End)>? spans)
    {
        if (word.IsEmpty) return;
        if (word.Length <= CachedWordMaxLength && _cacheBySpan.TryGetValue(word, out var cached))
        {
            Emit(cached, ids, spans);
            return;
        }
        int[] result = Compute(word);
        if (word.Length <= CachedWordMaxLength && _cache.Count < CacheCapacity) _cacheBySpan.TryAdd(word, result);
        Emit(result, ids, spans);
    }

    // A result is [n, id0..idn-1, end0..endn-1]: token i spans [end(i-1), end(i)) of the word's chars.
    private static void Emit(int[] result, List<int> ids, List<(int, int)>? spans)
    {
        int n = result[0];
        ids.AddRange(result.AsSpan(1, n));
        if (spans is null) return;
        int start = 0;
        for (int i = 0; i < n; i++)
        {
            int end = result[1 + n + i];
            spans.Add((start, end));
            start = end;
        }
    }

    private int[] Compute(ReadOnlySpan<char> word)
    {
        if (IgnoreMerges && Prefix is null && Suffix is null && _vocabBySpan.TryGetValue(word, out int whole))
            return [1, whole, word.Length];

        var symbols = new List<Symbol>(word.Length);
        InitialSymbols(word, symbols);
        var span = CollectionsMarshal.AsSpan(symbols);
        if (span.Length > NaiveMergeLimit) MergeWithHeap(span); else MergeNaive(span);

        int count = 0;
        foreach (ref readonly var s in span) if (s.Alive) count++;
        var result = new int[1 + 2 * count];
        result[0] = count;
        int k = 0;
        foreach (ref readonly var s in span)
        {
            if (!s.Alive) continue;
            result[1 + k] = s.Id;
            result[1 + count + k] = s.End;
            k++;
        }
        return result;
    }

    private void InitialSymbols(ReadOnlySpan<char> word, List<Symbol> symbols)
    {
        Span<byte> utf8 = stackalloc byte[4];
        int i = 0;
        while (i < word.Length)
        {
            int width = char.IsHighSurrogate(word[i]) && i + 1 < word.Length && char.IsLowSurrogate(word[i + 1]) ? 2 : 1;
            var ch = word.Slice(i, width);
            bool first = i == 0, last = i + width == word.Length;
            int id;
            bool found;
            if ((Prefix is null || first) && (Suffix is null || !last))
            {
                found = _vocabBySpan.TryGetValue(ch, out id);
            }
            else
            {
                string token = (first ? "" : Prefix) + ch.ToString() + (last ? Suffix : "");
                found = _vocab.TryGetValue(token, out id);
            }
            if (found)
            {
                symbols.Add(new Symbol(id, i, i + width));
            }
            else if (ByteFallback && TryByteFallback(ch, i, width, symbols, utf8))
            {
            }
            else if (UnkId >= 0)
            {
                if (FuseUnk && symbols.Count > 0 && symbols[^1].Id == UnkId && symbols[^1].IsUnk)
                {
                    var prev = symbols[^1];
                    symbols[^1] = prev with { End = i + width };
                }
                else
                {
                    symbols.Add(new Symbol(UnkId, i, i + width) { IsUnk = true });
                }
            }
            // With no unk token the Rust library drops the char; so do we.
            i += width;
        }
    }

    private bool TryByteFallback(ReadOnlySpan<char> ch, int start, int width, List<Symbol> symbols, Span<byte> utf8)
    {
        int n = Encoding.UTF8.GetBytes(ch, utf8);
        for (int b = 0; b < n; b++) if (_byteFallbackIds[utf8[b]] < 0) return false;
        for (int b = 0; b < n; b++) symbols.Add(new Symbol(_byteFallbackIds[utf8[b]], start, start + width));
        return true;
    }

    /// <summary>
    /// Replaces the merges by explicit (left, right) → (priority, merged id) entries; equal priorities are allowed and
    /// resolve leftmost first (SentencePiece's BPE, where a pair's priority is the merged piece's score).
    /// </summary>
    internal void SetMerges(IEnumerable<(int Left, int Right, int Priority, int Merged)> merges)
    {
        _merges.Clear();
        foreach (var (l, r, p, m) in merges) _merges[Key(l, r)] = Key(p, m);
    }

    private bool TryRank(in Symbol left, in Symbol right, out int rank, out int merged)
    {
        if (_merges.TryGetValue(Key(left.Id, right.Id), out long v))
        {
            rank = (int)(v >> 32);
            merged = (int)v;
            return true;
        }
        rank = merged = 0;
        return false;
    }

    private void MergeNaive(Span<Symbol> s)
    {
        // Symbols are kept compact: merging i and i+1 writes i and shifts the tail left.
        int n = s.Length;
        while (n > 1)
        {
            int best = -1, bestRank = int.MaxValue, bestMerged = 0;
            for (int i = 0; i + 1 < n; i++)
                if (TryRank(s[i], s[i + 1], out int r, out int m) && r < bestRank) { bestRank = r; best = i; bestMerged = m; }
            if (best < 0) break;
            s[best] = new Symbol(bestMerged, s[best].Start, s[best + 1].End);
            s.Slice(best + 2, n - best - 2).CopyTo(s.Slice(best + 1));
            n--;
        }
        for (int i = n; i < s.Length; i++) s[i] = s[i] with { Alive = false };
    }

    private void MergeWithHeap(Span<Symbol> s)
    {
        int n = s.Length;
        var prev = new int[n];
        var next = new int[n];
        for (int i = 0; i < n; i++) { prev[i] = i - 1; next[i] = i + 1 < n ? i + 1 : -1; }
        var heap = new PriorityQueue<(int Pos, int NewId), (int Rank, int Pos)>();
        for (int i = 0; i + 1 < n; i++)
            if (TryRank(s[i], s[i + 1], out int r, out int m)) heap.Enqueue((i, m), (r, i));

        while (heap.TryDequeue(out var top, out _))
        {
            int pos = top.Pos;
            if (!s[pos].Alive || next[pos] < 0) continue;
            int right = next[pos];
            if (!TryRank(s[pos], s[right], out _, out int merged) || merged != top.NewId) continue;
            s[pos] = new Symbol(top.NewId, s[pos].Start, s[right].End);
            s[right] = s[right] with { Alive = false };
            next[pos] = next[right];
            if (next[right] >= 0) prev[next[right]] = pos;
            if (prev[pos] >= 0 && TryRank(s[prev[pos]], s[pos], out int rp, out int mp)) heap.Enqueue((prev[pos], mp), (rp, prev[pos]));
            if (next[pos] >= 0 && TryRank(s[pos], s[next[pos]], out int rn, out int mn)) heap.Enqueue((pos, mn), (rn, pos));
        }
    }

    private static long Key(int a, int b) => ((long)a << 32) | (uint)b;

    private record struct Symbol(int Id, int Start, int End)
    {
        public bool Alive { get; init; } = true;
        public bool IsUnk { get; init; }
    }
}
