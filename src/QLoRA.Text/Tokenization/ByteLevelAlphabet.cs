namespace QLoRA.Text.Tokenization;

/// <summary>
/// GPT-2's byte-to-unicode map used by byte-level BPE: printable Latin-1 bytes stand for themselves, the other 68 bytes
/// take the chars from U+0100 upwards in byte order, so every byte is one visible char of the vocabulary.
/// </summary>
internal static class ByteLevelAlphabet
{
    /// <summary>The char standing for each byte.</summary>
    public static readonly char[] ByteToChar = BuildByteToChar();

    /// <summary>The byte each alphabet char stands for, or -1 (indexed by char, 0..0x143).</summary>
    public static readonly short[] CharToByte = BuildCharToByte();

    private static char[] BuildByteToChar()
    {
        var map = new char[256];
        int next = 256;
        for (int b = 0; b < 256; b++)
        {
            bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
            map[b] = printable ? (char)b : (char)next++;
        }
        return map;
    }

    private static short[] BuildCharToByte()
    {
        var inverse = new short[0x144];
        Array.Fill(inverse, (short)-1);
        for (int b = 0; b < 256; b++) inverse[ByteToChar[b]] = (short)b;
        return inverse;
    }

    /// <summary>The byte <paramref name="c"/> stands for, or -1 when it is not an alphabet char.</summary>
    public static int ByteOf(char c) => c < CharToByte.Length ? CharToByte[c] : -1;
}
