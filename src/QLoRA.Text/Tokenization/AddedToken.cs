namespace QLoRA.Text.Tokenization;

/// <summary>
/// An entry of tokenizer.json's <c>added_tokens</c>: matched in the text before the model runs.
/// </summary>
/// <param name="Id">Its id.</param>
/// <param name="Content">The text it matches.</param>
/// <param name="Special">Special tokens are dropped by <c>skip_special_tokens</c>.</param>
/// <param name="LStrip">The match takes the whitespace on its left.</param>
/// <param name="RStrip">The match takes the whitespace on its right.</param>
/// <param name="Normalized">Matched in the normalized text rather than the raw text.</param>
/// <param name="SingleWord">Matched only when not inside a word.</param>
public sealed record AddedToken(int Id, string Content, bool Special, bool LStrip, bool RStrip, bool Normalized, bool SingleWord);
