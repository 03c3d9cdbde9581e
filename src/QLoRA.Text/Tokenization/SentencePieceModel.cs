using System.Text;

namespace QLoRA.Text.Tokenization;

/// <summary>
/// Reads a SentencePiece <c>tokenizer.model</c> (a protobuf <c>ModelProto</c>) with model type BPE and the identity
/// normalization rule (Llama 2, Mistral, TinyLlama, …) and builds the equivalent pipeline: SentencePiece's whitespace
/// handling (extra-whitespace removal, dummy prefix, "▁" escaping), score-ordered BPE merges (a pair's priority is the
/// merged piece's score, leftmost first on ties), byte fallback, and SentencePiece's decoding.
/// </summary>
internal static class SentencePieceModel
{
    private enum PieceType { Normal = 1, Unknown = 2, Control = 3, UserDefined = 4, Unused = 5, Byte = 6 }

    private sealed record Piece(string Text, float Score, PieceType Type);

    public static HfTokenizer Load(string path, TokenizerConfig config)
    {
        byte[] bytes;
        try
        {
            bytes = File.ReadAllBytes(path);
        }
        catch (IOException e)
        {
            throw new TextFormatException(path, null, $"cannot be read: {e.Message}", e);
        }
        return FromBytes(bytes, path, config);
    }

    internal static HfTokenizer FromBytes(byte[] bytes, string path, TokenizerConfig config)
    {
        var pieces = new List<Piece>();
        int modelType = 1;                 // proto default: UNIGRAM
        bool byteFallback = false;
        string normalizerName = "nmt_nfkc";
        bool addDummyPrefix = true, removeExtraWhitespaces = true, escapeWhitespaces = true;
        bool hasCharsMap = false;
        bool treatWhitespaceAsSuffix = false;

        var reader = new ProtoReader(bytes, path, "ModelProto");
        while (reader.Next(out int field, out int wire))
        {
            switch (field)
            {
                case 1 when wire == 2:
                    pieces.Add(ReadPiece(reader.Message("pieces"), pieces.Count));
                    break;
                case 2 when wire == 2:
                {
                    var t = reader.Message("trainer_spec");
                    while (t.Next(out int f, out int w))
                    {
                        if (f == 3 && w == 0) modelType = (int)t.Varint();
                        else if (f == 35 && w == 0) byteFallback = t.Varint() != 0;
                        else if (f == 24 && w == 0) treatWhitespaceAsSuffix = t.Varint() != 0;
                        else t.Skip(w);
                    }
                    break;
                }
                case 3 when wire == 2:
                {
                    var n = reader.Message("normalizer_spec");
                    while (n.Next(out int f, out int w))
                    {
                        if (f == 1 && w == 2) normalizerName = n.String();
                        else if (f == 2 && w == 2) hasCharsMap = n.Bytes().Length > 0;
                        else if (f == 3 && w == 0) addDummyPrefix = n.Varint() != 0;
                        else if (f == 4 && w == 0) removeExtraWhitespaces = n.Varint() != 0;
                        else if (f == 5 && w == 0) escapeWhitespaces = n.Varint() != 0;
                        else n.Skip(w);
                    }
                    break;
                }
                default:
                    reader.Skip(wire);
                    break;
            }
        }

        if (pieces.Count == 0) throw new TextFormatException(path, "pieces", "the model has no pieces");
        if (modelType != 2)
            throw new UnsupportedTokenizerComponentException(path, "trainer_spec.model_type",
                $"model type {(modelType switch { 1 => "UNIGRAM", 3 => "WORD", 4 => "CHAR", _ => modelType.ToString() })} is not supported (only BPE)");
        if (normalizerName != "identity" && hasCharsMap)
            throw new UnsupportedTokenizerComponentException(path, "normalizer_spec.name",
                $"normalization rule '{normalizerName}' (a precompiled character map) is not supported; only 'identity'");
        if (treatWhitespaceAsSuffix)
            throw new UnsupportedTokenizerComponentException(path, "trainer_spec.treat_whitespace_as_suffix", "whitespace as a suffix is not supported");
        if (!escapeWhitespaces)
            throw new UnsupportedTokenizerComponentException(path, "normalizer_spec.escape_whitespaces", "models that do not escape whitespace are not supported");

        var vocab = new Dictionary<string, int>(StringComparer.Ordinal);
        string? unk = null;
        var added = new List<AddedToken>();
        for (int id = 0; id < pieces.Count; id++)
        {
            var p = pieces[id];
            if (!vocab.TryAdd(p.Text, id)) throw new TextFormatException(path, $"pieces[{id}]", $"piece '{p.Text}' appears twice");
            switch (p.Type)
            {
                case PieceType.Unknown:
                    unk = p.Text;
                    added.Add(new AddedToken(id, p.Text, Special: true, false, false, Normalized: false, false));
                    break;
                case PieceType.Control:
                    added.Add(new AddedToken(id, p.Text, Special: true, false, false, Normalized: false, false));
                    break;
                case PieceType.UserDefined:
                    added.Add(new AddedToken(id, p.Text, Special: false, false, false, Normalized: true, false));
                    break;
            }
        }
        var model = new BpeModel(vocab, [], unk, byteFallback, fuseUnk: true, ignoreMerges: false, null, null, path);
        // A pair merges when the two pieces concatenate to a normal piece; its priority is that piece's score.
        var scoreRank = pieces.Where(p => p.Type == PieceType.Normal).Select(p => p.Score).Distinct()
            .OrderByDescending(s => s).Select((s, i) => (s, i)).ToDictionary(x => x.s, x => x.i);
        var merges = new List<(int, int, int, int)>();
        for (int id = 0; id < pieces.Count; id++)
        {
            var p = pieces[id];
            if (p.Type != PieceType.Normal) continue;
            var runes = p.Text.EnumerateRunes().ToArray();
            int offset = 0;
            for (int k = 1; k < runes.Length; k++)
            {
                offset += runes[k - 1].Utf16SequenceLength;
                if (vocab.TryGetValue(p.Text[..offset], out int l) && vocab.TryGetValue(p.Text[offset..], out int r)
                    && IsMergeable(pieces[l]) && IsMergeable(pieces[r]))
                    merges.Add((l, r, scoreRank[p.Score], id));
            }
        }
        model.SetMerges(merges);

        var normalizer = new SentencePieceNormalizer(addDummyPrefix, removeExtraWhitespaces);
        Decoder decoder = new SequenceDecoder(
        [
            new ReplaceDecoder(SplitPattern.Literal("▁"), " "),
            new ByteFallbackDecoder(),
            new FuseDecoder(),
            new StripDecoder(' ', addDummyPrefix ? 1 : 0, 0),
        ]);
        var before = new List<int>();
        var after = new List<int>();
        if (config.BosToken is { } bos && vocab.TryGetValue(bos, out int bosId) && (config.AddBosToken ?? true)) before.Add(bosId);
        if (config.EosToken is { } eos && vocab.TryGetValue(eos, out int eosId) && (config.AddEosToken ?? false)) after.Add(eosId);
        var effective = config;
        if (config.SourcePath is null)
        {
            // No tokenizer_config.json: SentencePiece's own <s>/</s> are BOS/EOS and BOS is added, as LlamaTokenizer does.
            string? b = pieces.FirstOrDefault(p => p.Type == PieceType.Control && p.Text == "<s>")?.Text;
            string? e = pieces.FirstOrDefault(p => p.Type == PieceType.Control && p.Text == "</s>")?.Text;
            effective = new TokenizerConfig { BosToken = b, EosToken = e, UnkToken = unk, SpecialTokenVariables = config.SpecialTokenVariables };
            if (b is not null) before.Add(vocab[b]);
        }
        return new HfTokenizer(path, normalizer, null, byteLevel: false, model, decoder,
            new TemplatePostProcessor(before, after), added, effective);
    }

    private static bool IsMergeable(Piece p) => p.Type is PieceType.Normal;

    private static Piece ReadPiece(ProtoReader r, int index)
    {
        string? text = null;
        float score = 0;
        int type = 1;
        while (r.Next(out int f, out int w))
        {
            if (f == 1 && w == 2) text = r.String();
            else if (f == 2 && w == 5) score = r.Fixed32();
            else if (f == 3 && w == 0) type = (int)r.Varint();
            else r.Skip(w);
        }
        if (text is null) throw r.Error($"pieces[{index}]", "has no piece text");
        if (type is < 1 or > 6) throw r.Error($"pieces[{index}]", $"unknown piece type {type}");
        return new Piece(text, score, (PieceType)type);
    }

    /// <summary>A bounds-checked protobuf wire-format reader.</summary>
    private sealed class ProtoReader(byte[] data, string path, string where, int start = 0, int end = -1)
    {
        private int _pos = start;
        private readonly int _end = end < 0 ? data.Length : end;

        public TextFormatException Error(string item, string problem) => new(path, item, problem);

        public bool Next(out int field, out int wire)
        {
            field = wire = 0;
            if (_pos >= _end) return false;
            ulong tag = Varint();
            field = (int)(tag >> 3);
            wire = (int)(tag & 7);
            if (field == 0) throw Error(where, $"field number 0 at byte {_pos}");
            return true;
        }

        public ulong Varint()
        {
            ulong v = 0;
            for (int shift = 0; shift < 64; shift += 7)
            {
                if (_pos >= _end) throw Error(where, "truncated varint");
                byte b = data[_pos++];
                v |= (ulong)(b & 0x7F) << shift;
                if ((b & 0x80) == 0) return v;
            }
            throw Error(where, "varint longer than 10 bytes");
        }

        public float Fixed32()
        {
            if (_end - _pos < 4) throw Error(where, "truncated fixed32");
            float f = BitConverter.ToSingle(data, _pos);
            _pos += 4;
            return f;
        }

        private (int Start, int Length) Delimited()
        {
            ulong len = Varint();
            if (len > (ulong)(_end - _pos)) throw Error(where, $"length {len} at byte {_pos} runs past the end of the data");
            int s = _pos;
            _pos += (int)len;
            return (s, (int)len);
        }

        public ReadOnlySpan<byte> Bytes()
        {
            var (s, n) = Delimited();
            return data.AsSpan(s, n);
        }

        public string String()
        {
            var (s, n) = Delimited();
            try
            {
                return new UTF8Encoding(false, true).GetString(data, s, n);
            }
            catch (DecoderFallbackException)
            {
                throw Error(where, $"string at byte {s} is not valid UTF-8");
            }
        }

        public ProtoReader Message(string name)
        {
            var (s, n) = Delimited();
            return new ProtoReader(data, path, name, s, s + n);
        }

        public void Skip(int wire)
        {
            switch (wire)
            {
                case 0: Varint(); break;
                case 1: if (_end - _pos < 8) throw Error(where, "truncated fixed64"); _pos += 8; break;
                case 2: Delimited(); break;
                case 5: if (_end - _pos < 4) throw Error(where, "truncated fixed32"); _pos += 4; break;
                default: throw Error(where, $"unsupported wire type {wire} at byte {_pos}");
            }
        }
    }
}

/// <summary>SentencePiece's identity normalizer: optional extra-whitespace removal, dummy prefix, spaces as "▁".</summary>
internal sealed class SentencePieceNormalizer(bool addDummyPrefix, bool removeExtraWhitespaces) : Normalizer
{
    public override NormalizedText Normalize(NormalizedText text)
    {
        string t = text.Text;
        var b = text.Rebuild();
        int i = 0, end = t.Length;
        if (removeExtraWhitespaces)
        {
            while (i < end && t[i] == ' ') i++;
            while (end > i && t[end - 1] == ' ') end--;
        }
        if (i >= end) return text.Slice(i, i);
        if (addDummyPrefix) b.Replace(i, i, "▁");
        bool previousSpace = false;
        for (; i < end; i++)
        {
            if (t[i] == ' ')
            {
                if (!(removeExtraWhitespaces && previousSpace)) b.Replace(i, i + 1, "▁");
                previousSpace = true;
                continue;
            }
            previousSpace = false;
            b.Keep(i, i + 1);
        }
        return b.Build();
    }
}
