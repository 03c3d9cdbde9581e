namespace QLoRA.Core.HuggingFace;

/// <summary>What travels with the weights of a Hugging Face model folder, and how a folder is replaced whole.</summary>
public static class HuggingFaceFolder
{
    /// <summary>Tokenizer, chat-template and generation files copied beside a model's weights when present.</summary>
    public static IReadOnlyList<string> CompanionFiles { get; } =
    [
        "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model", "vocab.json",
        "merges.txt", "added_tokens.json", "chat_template.jinja", "generation_config.json",
    ];

    /// <summary>Copies the companion files present in <paramref name="from"/> into <paramref name="to"/>.</summary>
    public static void CopyCompanions(string from, string to)
    {
        foreach (string name in CompanionFiles)
        {
            string source = Path.Combine(from, name);
            if (File.Exists(source))
            {
                File.Copy(source, Path.Combine(to, name), overwrite: true);
            }
        }
    }

    /// <summary>
    /// Moves the finished folder <paramref name="source"/> to <paramref name="destination"/>, replacing a folder there:
    /// the old one is moved aside first and deleted last, so a reader never sees a half-written folder.
    /// </summary>
    public static void Replace(string source, string destination)
    {
        string? old = null;
        if (Directory.Exists(destination))
        {
            old = destination.TrimEnd(Path.DirectorySeparatorChar) + $".{Guid.NewGuid():N}.old";
            Directory.Move(destination, old);
        }

        Directory.Move(source, destination);
        if (old is not null)
        {
            Directory.Delete(old, recursive: true);
        }
    }
}
