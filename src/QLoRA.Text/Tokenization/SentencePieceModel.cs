namespace QLoRA.Text.Tokenization;

/// <summary>Reads a SentencePiece <c>tokenizer.model</c>.</summary>
internal static class SentencePieceModel
{
    public static HfTokenizer Load(string path, TokenizerConfig config) =>
        throw new UnsupportedTokenizerComponentException(path, "model", "SentencePiece tokenizer.model is not read yet");
}
