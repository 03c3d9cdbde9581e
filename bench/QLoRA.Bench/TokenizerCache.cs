namespace QLoRA.Bench;

/// <summary>Where tests/data/fetch-tokenizers.sh puts the real tokenizer files (QLORA_TOKENIZER_CACHE overrides).</summary>
internal static class TokenizerCache
{
    public static string Folder =>
        Environment.GetEnvironmentVariable("QLORA_TOKENIZER_CACHE") is { Length: > 0 } c ? c
        : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache", "qlora-tokenizers");
}
