using QLoRA.Core;

namespace QLoRA.Text;

/// <summary>
/// A tokenizer or template file (tokenizer.json, tokenizer_config.json, tokenizer.model, generation_config.json,
/// a chat template) is malformed or uses a component this library does not implement. The message names the file
/// and the component or field at fault.
/// </summary>
public class TextFormatException(string filePath, string? itemName, string problem, Exception? inner = null)
    : CheckpointFormatException(filePath, itemName, problem, inner);

/// <summary>A tokenizer file names a component (normalizer, pre-tokenizer, model, decoder, post-processor) that is not implemented.</summary>
public sealed class UnsupportedTokenizerComponentException(string filePath, string componentPath, string problem)
    : TextFormatException(filePath, componentPath, problem);
