using System.Text.Json;

namespace QLoRA.Text.Tokenization;

/// <summary>
/// The parts of tokenizer_config.json (and chat_template.jinja / chat_template.json beside it) that encoding, decoding
/// and chat templates use.
/// </summary>
public sealed class TokenizerConfig
{
    /// <summary>The file it was read from, or null for defaults.</summary>
    public string? SourcePath { get; init; }

    /// <summary><c>bos_token</c> text.</summary>
    public string? BosToken { get; init; }

    /// <summary><c>eos_token</c> text.</summary>
    public string? EosToken { get; init; }

    /// <summary><c>pad_token</c> text.</summary>
    public string? PadToken { get; init; }

    /// <summary><c>unk_token</c> text.</summary>
    public string? UnkToken { get; init; }

    /// <summary><c>add_bos_token</c>, when the file says.</summary>
    public bool? AddBosToken { get; init; }

    /// <summary><c>add_eos_token</c>, when the file says.</summary>
    public bool? AddEosToken { get; init; }

    /// <summary><c>tokenizer_class</c>, e.g. "LlamaTokenizerFast".</summary>
    public string? TokenizerClass { get; init; }

    /// <summary><c>clean_up_tokenization_spaces</c> (false when absent, as transformers 5 defaults).</summary>
    public bool CleanUpTokenizationSpaces { get; init; }

    /// <summary>Every top-level <c>*_token</c> string (bos_token, eos_token, pad_token, image_token, …): template variables.</summary>
    public IReadOnlyDictionary<string, string> SpecialTokenVariables { get; init; } = new Dictionary<string, string>();

    /// <summary>Named chat templates; the one named "default" is <see cref="ChatTemplate"/>.</summary>
    public IReadOnlyDictionary<string, string> ChatTemplates { get; init; } = new Dictionary<string, string>();

    /// <summary>Where the chat templates were read from.</summary>
    public string? ChatTemplateSource { get; init; }

    /// <summary>The default chat template, or null when the checkpoint has none.</summary>
    public string? ChatTemplate => ChatTemplates.TryGetValue("default", out var t) ? t : null;

    /// <summary>Reads <paramref name="folder"/>'s tokenizer_config.json and chat template files; defaults when absent.</summary>
    /// <exception cref="TextFormatException">A file is malformed; the message names it and the field.</exception>
    public static TokenizerConfig Load(string folder)
    {
        string path = Path.Combine(folder, "tokenizer_config.json");
        var templates = new Dictionary<string, string>(StringComparer.Ordinal);
        string? templateSource = null;
        var variables = new Dictionary<string, string>(StringComparer.Ordinal);
        string? bos = null, eos = null, pad = null, unk = null;
        bool? addBos = null, addEos = null;
        bool cleanUp = false;
        string? tokenizerClass = null;
        bool exists = File.Exists(path);
        if (exists)
        {
            using var doc = JsonFile.Parse(path);
            var root = doc.RootElement;
            if (root.ValueKind != JsonValueKind.Object) throw new TextFormatException(path, null, "must be a JSON object");
            foreach (var p in root.EnumerateObject())
            {
                if (!p.Name.EndsWith("_token", StringComparison.Ordinal)) continue;
                if (TokenText(p.Value, path, p.Name) is { } text) variables[p.Name] = text;
            }
            variables.TryGetValue("bos_token", out bos);
            variables.TryGetValue("eos_token", out eos);
            variables.TryGetValue("pad_token", out pad);
            variables.TryGetValue("unk_token", out unk);
            addBos = root.OptElement("add_bos_token") is { } ab ? root.OptBool("add_bos_token", false, path, "") : null;
            addEos = root.OptElement("add_eos_token") is { } ae ? root.OptBool("add_eos_token", false, path, "") : null;
            cleanUp = root.OptBool("clean_up_tokenization_spaces", false, path, "");
            tokenizerClass = root.OptString("tokenizer_class", path, "");
            if (root.OptElement("chat_template") is { } ct)
            {
                ReadTemplates(ct, path, "chat_template", templates);
                templateSource = path;
            }
        }
        string jinja = Path.Combine(folder, "chat_template.jinja");
        if (File.Exists(jinja))
        {
            templates["default"] = File.ReadAllText(jinja);
            templateSource = jinja;
        }
        string templatesDir = Path.Combine(folder, "additional_chat_templates");
        if (Directory.Exists(templatesDir))
            foreach (var f in Directory.EnumerateFiles(templatesDir, "*.jinja"))
                templates[Path.GetFileNameWithoutExtension(f)] = File.ReadAllText(f);
        string json = Path.Combine(folder, "chat_template.json");
        if (File.Exists(json) && !File.Exists(jinja))
        {
            using var doc = JsonFile.Parse(json);
            if (doc.RootElement.OptElement("chat_template") is not { } ct)
                throw new TextFormatException(json, "chat_template", "is missing");
            ReadTemplates(ct, json, "chat_template", templates);
            templateSource = json;
        }
        return new TokenizerConfig
        {
            SourcePath = exists ? path : null,
            BosToken = bos, EosToken = eos, PadToken = pad, UnkToken = unk,
            AddBosToken = addBos, AddEosToken = addEos, CleanUpTokenizationSpaces = cleanUp, TokenizerClass = tokenizerClass,
            SpecialTokenVariables = variables, ChatTemplates = templates, ChatTemplateSource = templateSource,
        };
    }

    private static string? TokenText(JsonElement v, string path, string name) => v.ValueKind switch
    {
        JsonValueKind.String => v.GetString(),
        JsonValueKind.Object => v.ReqString("content", path, name),   // a serialized AddedToken
        JsonValueKind.Null => null,
        _ => null,
    };

    private static void ReadTemplates(JsonElement ct, string path, string where, Dictionary<string, string> templates)
    {
        if (ct.ValueKind == JsonValueKind.String)
        {
            templates["default"] = ct.GetString()!;
            return;
        }
        if (ct.ValueKind != JsonValueKind.Array)
            throw new TextFormatException(path, where, "must be a string or a list of {name, template}");
        int i = 0;
        foreach (var item in ct.EnumerateArray())
        {
            string w = $"{where}[{i++}]";
            templates[item.ReqString("name", path, w)] = item.ReqString("template", path, w);
        }
    }
}
