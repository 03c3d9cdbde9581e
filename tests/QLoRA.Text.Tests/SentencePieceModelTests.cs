using System.Diagnostics;

namespace QLoRA.Text.Tests;

/// <summary>
/// tokenizer.model (SentencePiece protobuf) against SentencePiece itself: models trained here with Debian's
/// <c>spm_train</c> and encoded with <c>spm_encode</c> (apt-get install sentencepiece).
/// </summary>
public sealed class SentencePieceModelTests(ITestOutputHelper output)
{
    private static string Run(string exe, string args, string? stdin = null)
    {
        var psi = new ProcessStartInfo(exe, args) { RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = stdin is not null };
        Process p;
        try
        {
            p = Process.Start(psi)!;
        }
        catch (System.ComponentModel.Win32Exception)
        {
            Assert.Fail($"{exe} is not installed: apt-get install sentencepiece");
            throw;
        }
        using (p)
        {
            if (stdin is not null)
            {
                p.StandardInput.Write(stdin);
                p.StandardInput.Close();
            }
            string o = p.StandardOutput.ReadToEnd();
            string e = p.StandardError.ReadToEnd();
            p.WaitForExit();
            if (p.ExitCode != 0) Assert.Fail($"{exe} {args} failed: {e}");
            return o;
        }
    }

    private static IEnumerable<string> Lines() =>
        TestCorpus.All().Select(s => s.Replace('\n', ' ').Replace('\r', ' ').Replace('\0', ' ')).Where(s => s.Length is > 0 and < 3000);

    private static string Train(string dir, string name, string extra)
    {
        string corpus = Path.Combine(dir, "corpus.txt");
        if (!File.Exists(corpus)) File.WriteAllLines(corpus, Lines().Concat(Lines().Select(l => l.ToLowerInvariant())));
        string prefix = Path.Combine(dir, name);
        Run("spm_train", $"--input={corpus} --model_prefix={prefix} --minloglevel=2 --normalization_rule_name=identity {extra}");
        string folder = Path.Combine(dir, name + "-folder");
        Directory.CreateDirectory(folder);
        File.Copy(prefix + ".model", Path.Combine(folder, "tokenizer.model"), overwrite: true);
        return folder;
    }

    [Theory]
    [InlineData("bytefallback", "--model_type=bpe --vocab_size=800 --byte_fallback=true --remove_extra_whitespaces=false --user_defined_symbols=<tool>,<|x|> --character_coverage=0.995")]
    [InlineData("unk", "--model_type=bpe --vocab_size=600 --byte_fallback=false --character_coverage=0.98")]
    [InlineData("nodummy", "--model_type=bpe --vocab_size=900 --byte_fallback=true --add_dummy_prefix=false --split_digits=true")]
    public void Ids_match_spm_encode(string name, string options)
    {
        string dir = Directory.CreateTempSubdirectory("qlora-spm-").FullName;
        try
        {
            string folder = Train(dir, name, options);
            var tok = HfTokenizer.FromFolder(folder);
            // spm_encode reads "<s>", "</s>" and "<unk>" in the text as plain characters; transformers (and we) read them
            // as the special tokens they name — checked separately below — so lines holding them are left out here.
            var lines = Lines().Where(l => !l.Contains("<s>") && !l.Contains("</s>") && !l.Contains("<unk>")).ToList();
            var expected = Run("spm_encode", $"--model={Path.Combine(folder, "tokenizer.model")} --output_format=id", string.Join("\n", lines) + "\n")
                .Split('\n')[..lines.Count];
            int mismatches = 0;
            var report = new List<string>();
            for (int i = 0; i < lines.Count; i++)
            {
                int[] want = expected[i].Length == 0 ? [] : expected[i].Split(' ').Select(int.Parse).ToArray();
                int[] got = tok.Encode(lines[i], addSpecialTokens: false);
                if (want.AsSpan().SequenceEqual(got)) continue;
                mismatches++;
                if (report.Count < 5) report.Add($"{ReferenceTokenizerTests.Escape(lines[i])}\n  spm:  {expected[i]}\n  ours: {string.Join(" ", got)}");
            }
            output.WriteLine($"{name}: {lines.Count} lines, {mismatches} mismatches");
            Assert.True(mismatches == 0, string.Join("\n", report));
            int[] special = tok.Encode("a</s>b", addSpecialTokens: false);
            Assert.Contains(tok.TokenToId("</s>")!.Value, special);
            // BOS from the model's <s> (no tokenizer_config.json), decode as SentencePiece does.
            int[] withBos = tok.Encode("hello world", addSpecialTokens: true);
            Assert.Equal(tok.TokenToId("<s>"), withBos[0]);
            string decoded = Run("spm_decode", $"--model={Path.Combine(folder, "tokenizer.model")} --input_format=id",
                string.Join(" ", tok.Encode("hello  world 😀 x", addSpecialTokens: false)) + "\n").TrimEnd('\n');
            Assert.Equal(decoded, tok.Decode(tok.Encode("hello  world 😀 x", addSpecialTokens: false)));
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [Fact]
    public void A_unigram_model_is_refused_naming_the_field()
    {
        string dir = Directory.CreateTempSubdirectory("qlora-spm-").FullName;
        try
        {
            string folder = Train(dir, "unigram", "--model_type=unigram --vocab_size=300");
            var e = Assert.Throws<UnsupportedTokenizerComponentException>(() => HfTokenizer.FromFolder(folder));
            Assert.Contains("tokenizer.model", e.Message);
            Assert.Contains("trainer_spec.model_type", e.Message);
            Assert.Contains("UNIGRAM", e.Message);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [Fact]
    public void Truncated_and_garbage_model_files_are_typed_errors()
    {
        string dir = Directory.CreateTempSubdirectory("qlora-spm-").FullName;
        try
        {
            string folder = Train(dir, "ok", "--model_type=bpe --vocab_size=400");
            string model = Path.Combine(folder, "tokenizer.model");
            byte[] bytes = File.ReadAllBytes(model);
            var rng = new Random(7);
            foreach (int cut in Enumerable.Range(0, 40).Select(_ => rng.Next(1, bytes.Length - 1)).Append(1).Append(bytes.Length / 2))
            {
                File.WriteAllBytes(model, bytes[..cut]);
                var e = Assert.ThrowsAny<TextFormatException>(() => HfTokenizer.FromFolder(folder));
                Assert.Contains("tokenizer.model", e.Message);
            }
            File.WriteAllBytes(model, [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]);
            Assert.ThrowsAny<TextFormatException>(() => HfTokenizer.FromFolder(folder));
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }
}
