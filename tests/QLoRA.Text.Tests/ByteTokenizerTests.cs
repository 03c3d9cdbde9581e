using QLoRA.Text.Templates;
using QLoRA.Text.Tokenization;

namespace QLoRA.Text.Tests;

/// <summary>The byte-level tokenizer files for small models: the Rust tokenizers library reads them as we do, every byte round-trips, the template renders.</summary>
public sealed class ByteTokenizerTests
{
    [Fact]
    public void TheFilesEncodeAsTheRustLibraryDoesAndEveryTextRoundTrips()
    {
        string folder = Directory.CreateTempSubdirectory("qlora-bytetok-").FullName;
        ByteTokenizer.WriteFiles(folder);
        var ours = HfTokenizer.FromFolder(folder);
        var reference = new Tokenizers.DotNet.Tokenizer(vocabPath: Path.Combine(folder, "tokenizer.json"));
        foreach (string text in TestCorpus.All().Take(200).Append("héllo wörld 🙂 <|user|>hi<|end|>"))
        {
            int[] ids = ours.Encode(text);
            Assert.Equal(Array.ConvertAll(reference.Encode(text), x => (int)x), ids);
            Assert.Equal(text, ours.Decode(ids));
        }

        Assert.Equal([259, 104, 105, 257], ours.Encode("<|user|>hi<|end|>")); // special tokens whole, bytes one each
        var chat = new ChatFormatter(ours);
        string rendered = chat.Render([new ChatMessage("user", "hi")], addGenerationPrompt: true);
        Assert.Equal("<s><|user|>hi<|end|><|assistant|>", rendered);
        TrainingExample example = chat.EncodeConversation([new ChatMessage("user", "hi"), new ChatMessage("assistant", "yo")]);
        Assert.Equal([false, false, false, false, false, false, true, true, true], example.TrainMask.TakeLast(9)); // "yo<|end|>" trained, EOS included
    }
}
