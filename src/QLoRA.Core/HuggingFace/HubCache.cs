using System.Text.RegularExpressions;

namespace QLoRA.Core.HuggingFace;

/// <summary>
/// Finds models in the local Hugging Face hub cache, laid out as huggingface_hub writes it and Python tools share it:
/// <c>&lt;cache&gt;/models--&lt;org&gt;--&lt;name&gt;/refs/&lt;revision&gt;</c> holds a commit hash, and
/// <c>snapshots/&lt;hash&gt;/</c> the files. The cache is <c>HF_HUB_CACHE</c>, else <c>HF_HOME/hub</c>, else
/// <c>~/.cache/huggingface/hub</c>.
/// </summary>
public static partial class HubCache
{
    /// <summary>The cache folder the environment names (HF_HUB_CACHE, HF_HOME/hub, ~/.cache/huggingface/hub).</summary>
    public static string Root(Func<string, string?>? environment = null)
    {
        environment ??= Environment.GetEnvironmentVariable;
        if (environment("HF_HUB_CACHE") is { Length: > 0 } hub)
        {
            return hub;
        }

        string home = environment("HF_HOME") is { Length: > 0 } hfHome
            ? hfHome
            : Path.Combine(environment("XDG_CACHE_HOME") is { Length: > 0 } xdg ? xdg : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache"), "huggingface");
        return Path.Combine(home, "hub");
    }

    /// <summary>
    /// A local folder as it is, or a hub id (<c>org/name</c>, optionally <c>@revision</c>: a branch, tag or commit) resolved
    /// to its snapshot folder in the cache.
    /// </summary>
    /// <param name="model">A folder path or a hub id.</param>
    /// <param name="cacheRoot">The cache to look in (default: <see cref="Root"/>).</param>
    /// <exception cref="DirectoryNotFoundException">Neither a folder nor a cached model; the message names where it looked.</exception>
    public static string Resolve(string model, string? cacheRoot = null)
    {
        if (Directory.Exists(model))
        {
            return Path.GetFullPath(model);
        }

        Match m = HubId().Match(model);
        if (!m.Success)
        {
            throw new DirectoryNotFoundException($"{model}: no such model folder (and not a Hugging Face id such as meta-llama/Llama-3.2-1B)");
        }

        string root = cacheRoot ?? Root();
        string repo = Path.Combine(root, $"models--{m.Groups["org"].Value}--{m.Groups["name"].Value}");
        string revision = m.Groups["rev"].Success ? m.Groups["rev"].Value : "main";
        string refFile = Path.Combine(repo, "refs", revision);
        string commit = File.Exists(refFile) ? File.ReadAllText(refFile).Trim() : revision;
        string snapshot = Path.Combine(repo, "snapshots", commit);
        if (!CommitHash().IsMatch(commit) || !Directory.Exists(snapshot))
        {
            throw new DirectoryNotFoundException(
                $"{model}: not in the Hugging Face cache {root} (looked for {refFile} and {Path.Combine(repo, "snapshots")}); download it first, e.g. `huggingface-cli download {m.Groups["org"].Value}/{m.Groups["name"].Value}`");
        }

        return snapshot;
    }

    /// <summary>
    /// <see cref="Resolve"/>, and for a hub id not in the cache a download of what the model needs
    /// (<see cref="HubDownloader"/>) unless <c>HF_HUB_OFFLINE=1</c>.
    /// </summary>
    /// <exception cref="DirectoryNotFoundException">Not a folder, and not a hub id (or offline and not cached).</exception>
    /// <exception cref="HubDownloadException">The download failed (the message says why).</exception>
    public static string ResolveOrDownload(string model, IProgress<HubProgress>? progress = null, CancellationToken cancellationToken = default)
    {
        try
        {
            return Resolve(model);
        }
        catch (DirectoryNotFoundException) when (ParseId(model) is not null && Environment.GetEnvironmentVariable("HF_HUB_OFFLINE") is not ("1" or "true" or "TRUE"))
        {
            using var downloader = new HubDownloader { Progress = progress };
            return downloader.DownloadModelAsync(model, cancellationToken).GetAwaiter().GetResult();
        }
    }

    /// <summary>(org/name, revision) of a hub id <c>org/name[@revision]</c> (revision main by default), or null.</summary>
    public static (string Repo, string Revision)? ParseId(string model)
    {
        Match m = HubId().Match(model);
        return m.Success ? ($"{m.Groups["org"].Value}/{m.Groups["name"].Value}", m.Groups["rev"].Success ? m.Groups["rev"].Value : "main") : null;
    }

    [GeneratedRegex(@"^(?<org>[A-Za-z0-9][A-Za-z0-9_.\-]*)/(?<name>[A-Za-z0-9][A-Za-z0-9_.\-]*)(@(?<rev>[A-Za-z0-9_.\-/]+))?$")]
    private static partial Regex HubId();

    [GeneratedRegex("^[0-9a-f]{40}$")]
    private static partial Regex CommitHash();
}
