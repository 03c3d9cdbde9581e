namespace QLoRA.Text.Tokenization;

/// <summary>The result of encoding a text: ids and, for each, the span of the input it came from.</summary>
/// <param name="Ids">Token ids.</param>
/// <param name="Offsets">Per token, the [Start, End) UTF-16 span of the input string; (0, 0) for tokens the post-processor added.</param>
public sealed record TokenEncoding(int[] Ids, (int Start, int End)[] Offsets);
