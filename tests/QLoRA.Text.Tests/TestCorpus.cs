using System.Text;

namespace QLoRA.Text.Tests;

/// <summary>
/// The text corpus the tokenizer is checked on: hand-picked hard cases (prose, code, digit runs, whitespace runs,
/// tabs and newlines, CJK, emoji and other 4-byte characters, combining marks, RTL text, special-token text inside
/// content, very long words) plus seeded random mixtures of them.
/// </summary>
internal static class TestCorpus
{
    public static readonly string[] Fixed =
    [
        "Hello world", "Hello, world!", " Hello world", "  leading spaces", "trailing spaces   ", "", " ", "  ", "\n", "\t",
        "The quick brown fox jumps over the lazy dog.", "I'm sure it's fine, isn't it? They'll see; we'd go; you've been; we're here.",
        "IT'S LOUD. I'M HERE. THEY'RE GONE. WE'VE WON.", "it'ſ", "don't", "O'Neil's", "rock 'n' roll", "'quoted'", "\"double quoted\"",
        "1234567890", "3.14159265358979", "1,000,000", "2024-12-01T17:05:00Z", "v1.2.3-beta+build.45", "0x7fffffff", "1e-10", "١٢٣٤٥ ٦٧٨",
        "½ ¾ ² ³ Ⅻ", "12 345 6789 0", "a1b2c3d4", "999999999999999999999999",
        "def add(a, b):\n    return a + b\n", "for (int i = 0; i < n; i++) { sum += x[i]; }", "if x==1:\n\tprint('one')\nelse:\n\tpass",
        "SELECT * FROM users WHERE id = 42;", "<div class=\"x\">Hi</div>", "{\"key\": [1, 2, 3], \"nested\": {\"a\": null}}",
        "#include <stdio.h>\nint main(void) { printf(\"%d\\n\", 42); }", "λx. x + 1", "fn main() { println!(\"{}\", 1 << 3); }",
        "    indented four", "\t\ttabs\tbetween\twords", "line1\nline2\n\nline4\n\n\n", "windows\r\nline\r\nendings", "mixed \t \n \r\n whitespace",
        "a  b   c    d     e", "end with newline\n", "\n\nstarts with newlines", "   \n   ", "\u00A0non-breaking\u00A0space", "thin\u2009space and\u3000ideographic",
        "日本語のテキストです。", "中文分词测试，包括标点符号。", "한국어 문장입니다.", "混合 English と日本語 text", "𠀀𠀁𠀂 CJK Extension B", "𝐀𝐁𝐂 math bold 𝑥𝑦𝑧",
        "😀", "😀😃😄", "emoji 👍 in text", "😀abc", "abc😀", "👨‍👩‍👧‍👦 family", "🏳️‍🌈 flag", "🇩🇪🇫🇷🇯🇵", "❤️ heart", "a👍b👍c", "🤖🦙🧠",
        "e\u0301 combining acute", "n\u0303o", "Zalgo: Z\u0336\u0337a\u0338l\u0335g\u0334o", "å vs a\u030A", "ﬁ ligature", "Ｆｕｌｌｗｉｄｔｈ", "ǅ titlecase",
        "שלום עולם", "مرحبا بالعالم", "mixed עברית and English", "\u200Fright-to-left mark", "zero\u200Bwidth\u200Bspace", "soft\u00ADhyphen",
        "<s> inside text", "text </s> more", "<|begin_of_text|>hello", "hi <|eot_id|> there", "<|im_start|>user\nhi<|im_end|>", "<start_of_turn>user",
        "<unk>", "<pad>", "<bos><eos>", "<|endoftext|>", "<0x41>", "▁already▁metaspace", "Ġ", "ĠHello",
        "Ünïcödé àccénts", "Ελληνικά γράμματα", "Русский текст", "ภาษาไทย", "हिन्दी पाठ", "Tiếng Việt có dấu",
        "!!!???...", "---===+++", "@#$%^&*()", "~`|\\/<>", "...", "…", "—–-", "«»„“”‘’",
        "https://example.com/path?query=1&x=y#frag", "user@example.com", "C:\\Windows\\System32", "/usr/local/bin/", "$HOME/.cache",
        "ThisIsCamelCase", "snake_case_name", "kebab-case-name", "SCREAMING_CASE", "mIxEdCaSe", "a", "A", "ab", "I",
        "\u0000null char", "bell\u0007", "\u001b[31mred\u001b[0m", "\uFFFD replacement", "\uFEFFbom",
    ];

    /// <summary>Fixed cases, very long words and 220 seeded random mixtures.</summary>
    public static IEnumerable<string> All()
    {
        foreach (var s in Fixed) yield return s;
        yield return new string('a', 10_000);
        yield return string.Concat(Enumerable.Repeat("abc", 3400));
        yield return string.Concat(Enumerable.Repeat("😀", 2500));
        yield return new string(' ', 5000);
        yield return string.Concat(Enumerable.Repeat("1234567890", 1000));
        yield return string.Concat(Enumerable.Repeat("日本", 2500));
        var rng = new Random(20261201);
        for (int i = 0; i < 220; i++) yield return Mix(rng);
    }

    private static string Mix(Random rng)
    {
        var sb = new StringBuilder();
        int parts = rng.Next(1, 8);
        for (int p = 0; p < parts; p++)
        {
            string frag = Fixed[rng.Next(Fixed.Length)];
            if (frag.Length > 0 && rng.Next(3) == 0) frag = frag[..rng.Next(frag.Length + 1)];
            sb.Append(frag);
            sb.Append(rng.Next(6) switch { 0 => " ", 1 => "  ", 2 => "\n", 3 => "", 4 => "\t", _ => " " });
        }
        string s = sb.ToString();
        // Never leave a split surrogate pair: the reference library receives strings as UTF-8.
        var clean = new StringBuilder(s.Length);
        for (int i = 0; i < s.Length; i++)
        {
            if (char.IsHighSurrogate(s[i]) && (i + 1 >= s.Length || !char.IsLowSurrogate(s[i + 1]))) continue;
            if (char.IsLowSurrogate(s[i]) && (i == 0 || !char.IsHighSurrogate(s[i - 1]))) continue;
            clean.Append(s[i]);
        }
        return clean.ToString();
    }
}
