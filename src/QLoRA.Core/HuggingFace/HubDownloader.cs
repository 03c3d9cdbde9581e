using System.Globalization;
using System.Net;
using System.Net.Http.Headers;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;

namespace QLoRA.Core.HuggingFace;

/// <summary>A Hub download failed in a way the user must act on (authentication, a missing repository or file, a corrupt transfer).</summary>
public sealed class HubDownloadException(string message, Exception? inner = null) : IOException(message, inner);

/// <summary>Progress of one file: bytes on disk of its total.</summary>
public readonly record struct HubProgress(string File, long Bytes, long Total);

/// <summary>
/// Downloads models from the Hugging Face Hub (or a mirror: <c>HF_ENDPOINT</c>) into the local hub cache in
/// huggingface_hub's own layout — <c>blobs/&lt;etag&gt;</c>, <c>snapshots/&lt;commit&gt;/&lt;file&gt;</c> linking to the
/// blob, <c>refs/&lt;revision&gt;</c> — so Python tools and <see cref="HubCache.Resolve"/> share it. Only the files a
/// model needs (config, tokenizer and generation files, the safetensors weights or their shards); each resolved with a
/// HEAD of <c>/{repo}/resolve/{revision}/{file}</c> (commit, etag, size), fetched following redirects (the token is sent
/// to the Hub's host only), resumed with a Range request after a cut, verified (size; SHA-256 for LFS files, the git
/// blob hash otherwise) and moved into place atomically; a lock file per blob keeps concurrent downloads of the same
/// file — from threads or processes — to one transfer. <c>HF_TOKEN</c> authenticates.
/// </summary>
public sealed class HubDownloader : IDisposable
{
    /// <summary>Files fetched beside the weights when the repository has them.</summary>
    public static IReadOnlyList<string> CompanionFiles { get; } =
        ["generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja", "tokenizer.model"];

    private readonly HttpClient _http;
    private readonly Uri _endpoint;
    private readonly string? _token;
    private readonly string _cache;

    /// <summary>A downloader for <paramref name="endpoint"/> (default HF_ENDPOINT, else https://huggingface.co).</summary>
    public HubDownloader(string? endpoint = null, string? token = null, string? cacheRoot = null, Func<string, string?>? environment = null)
    {
        environment ??= Environment.GetEnvironmentVariable;
        _endpoint = new Uri((endpoint ?? environment("HF_ENDPOINT") ?? "https://huggingface.co").TrimEnd('/') + "/");
        _token = token ?? environment("HF_TOKEN") ?? environment("HUGGING_FACE_HUB_TOKEN");
        _cache = cacheRoot ?? HubCache.Root(environment);
        _http = new HttpClient(new SocketsHttpHandler { AllowAutoRedirect = false }) { Timeout = TimeSpan.FromMinutes(30) };
    }

    /// <summary>Attempts per file when a transfer is cut (each resumes where the last stopped).</summary>
    public int Attempts { get; init; } = 4;

    /// <summary>Per-file progress.</summary>
    public IProgress<HubProgress>? Progress { get; init; }

    /// <summary>
    /// Downloads what <paramref name="id"/> (<c>org/name[@revision]</c>) needs and returns its snapshot folder.
    /// </summary>
    /// <exception cref="HubDownloadException">Authentication required (401/403), the repository, revision or weights not found (404), or a transfer that stays cut or corrupt.</exception>
    public async Task<string> DownloadModelAsync(string id, CancellationToken cancellationToken = default)
    {
        (string repo, string revision) = HubCache.ParseId(id) ?? throw new ArgumentException($"'{id}' is not a Hugging Face id such as org/name or org/name@revision.", nameof(id));
        string snapshot = await DownloadFileAsync(repo, revision, "config.json", optional: false, cancellationToken).ConfigureAwait(false) is { } config
            ? Path.GetDirectoryName(config)!
            : throw new InvalidOperationException();
        foreach (string file in CompanionFiles)
        {
            await DownloadFileAsync(repo, revision, file, optional: true, cancellationToken).ConfigureAwait(false);
        }

        string? index = await DownloadFileAsync(repo, revision, "model.safetensors.index.json", optional: true, cancellationToken).ConfigureAwait(false);
        IEnumerable<string> weights = index is null ? ["model.safetensors"] : Shards(index);
        foreach (string file in weights)
        {
            await DownloadFileAsync(repo, revision, file, optional: false, cancellationToken).ConfigureAwait(false);
        }

        return snapshot;
    }

    /// <summary>Downloads one file of <paramref name="repo"/> at <paramref name="revision"/>; returns its snapshot path (null for a missing optional file).</summary>
    public async Task<string?> DownloadFileAsync(string repo, string revision, string file, bool optional, CancellationToken cancellationToken = default)
    {
        var url = new Uri(_endpoint, $"{repo}/resolve/{Uri.EscapeDataString(revision)}/{string.Join('/', file.Split('/').Select(Uri.EscapeDataString))}");
        using var head = new HttpRequestMessage(HttpMethod.Head, url);
        Authorize(head);
        HttpResponseMessage meta;
        try
        {
            meta = await _http.SendAsync(head, cancellationToken).ConfigureAwait(false);
        }
        catch (HttpRequestException e)
        {
            throw new HubDownloadException($"{repo}@{revision}: cannot reach {_endpoint} ({e.Message}); set HF_ENDPOINT for a mirror, or HF_HUB_OFFLINE=1 and put the model in the cache", e);
        }

        using HttpResponseMessage response = meta;
        if (meta.StatusCode == HttpStatusCode.NotFound && optional)
        {
            return null;
        }

        Check(meta, repo, revision, file);
        string commit = Header(meta, "X-Repo-Commit") ?? throw new HubDownloadException($"{url}: the server sent no X-Repo-Commit header (not a Hugging Face Hub endpoint?)");
        string etag = (Header(meta, "X-Linked-Etag") ?? meta.Headers.ETag?.Tag ?? throw new HubDownloadException($"{url}: the server sent no ETag")).Replace("W/", "", StringComparison.Ordinal).Trim('"');
        long size = long.TryParse(Header(meta, "X-Linked-Size"), NumberStyles.None, CultureInfo.InvariantCulture, out long linked) ? linked
            : meta.Content.Headers.ContentLength ?? throw new HubDownloadException($"{url}: the server sent no size");
        if (!SafeName(commit) || !SafeName(etag) || file.Split('/').Any(p => p is "" or "." or ".."))
        {
            throw new HubDownloadException($"{url}: unusable commit '{commit}', etag '{etag}' or file name");
        }

        string folder = Path.Combine(_cache, "models--" + repo.Replace("/", "--", StringComparison.Ordinal));
        string blob = Path.Combine(folder, "blobs", etag);
        string snapshotFile = Path.Combine(folder, "snapshots", commit, file.Replace('/', Path.DirectorySeparatorChar));
        Directory.CreateDirectory(Path.GetDirectoryName(blob)!);
        if (!(File.Exists(blob) && new FileInfo(blob).Length == size))
        {
            string locks = Path.Combine(_cache, ".locks", Path.GetFileName(folder));
            Directory.CreateDirectory(locks);
            using FileStream gate = await Lock(Path.Combine(locks, etag + ".lock"), cancellationToken).ConfigureAwait(false);
            if (!(File.Exists(blob) && new FileInfo(blob).Length == size))
            {
                await Fetch(url, blob, etag, size, file, cancellationToken).ConfigureAwait(false);
            }
        }

        Link(snapshotFile, blob);
        if (!string.Equals(revision, commit, StringComparison.Ordinal))
        {
            Directory.CreateDirectory(Path.Combine(folder, "refs"));
            Core.AtomicFile.WriteAllText(Path.Combine(folder, "refs", revision), commit);
        }

        return snapshotFile;
    }

    private async Task Fetch(Uri url, string blob, string etag, long size, string file, CancellationToken cancellationToken)
    {
        string partial = blob + ".incomplete";
        for (int attempt = 1; ; attempt++)
        {
            long have = File.Exists(partial) ? new FileInfo(partial).Length : 0;
            if (have > size)
            {
                File.Delete(partial);
                have = 0;
            }

            try
            {
                if (have < size)
                {
                    await Transfer(url, partial, have, size, file, cancellationToken).ConfigureAwait(false);
                }

                long got = new FileInfo(partial).Length;
                if (got != size)
                {
                    throw new IOException($"{file}: the transfer stopped at {got:N0} of {size:N0} bytes");
                }

                break;
            }
            catch (Exception e) when (e is IOException or HttpRequestException && e is not HubDownloadException && attempt < Attempts)
            {
                // A cut connection: the next attempt resumes from what is on disk.
            }
            catch (Exception e) when (e is IOException or HttpRequestException && e is not HubDownloadException)
            {
                throw new HubDownloadException($"{url}: {e.Message} after {Attempts} attempts", e);
            }
        }

        if (!Verify(partial, etag))
        {
            File.Delete(partial);
            throw new HubDownloadException($"{url}: the downloaded bytes do not match the etag {etag} (corrupt transfer; deleted, run again)");
        }

        File.Move(partial, blob, overwrite: true);
    }

    private async Task Transfer(Uri url, string partial, long offset, long size, string file, CancellationToken cancellationToken)
    {
        Uri current = url;
        for (int redirects = 0; ; redirects++)
        {
            using var get = new HttpRequestMessage(HttpMethod.Get, current);
            if (current.Host == _endpoint.Host && current.Port == _endpoint.Port)
            {
                Authorize(get); // not to a CDN the Hub redirects to
            }

            if (offset > 0)
            {
                get.Headers.Range = new RangeHeaderValue(offset, null);
            }

            using HttpResponseMessage response = await _http.SendAsync(get, HttpCompletionOption.ResponseHeadersRead, cancellationToken).ConfigureAwait(false);
            if ((int)response.StatusCode is >= 300 and < 400 && response.Headers.Location is { } location)
            {
                if (redirects >= 10)
                {
                    throw new HubDownloadException($"{url}: more than 10 redirects");
                }

                current = location.IsAbsoluteUri ? location : new Uri(current, location);
                continue;
            }

            if (response.StatusCode == HttpStatusCode.RequestedRangeNotSatisfiable)
            {
                File.Delete(partial); // the server does not know that range: start over
                throw new IOException($"{file}: range {offset}- refused");
            }

            Check(response, url.ToString(), "", file);
            bool resumed = response.StatusCode == HttpStatusCode.PartialContent;
            await using var output = new FileStream(partial, resumed ? FileMode.Append : FileMode.Create, FileAccess.Write, FileShare.None, 1 << 20, useAsync: true);
            await using Stream body = await response.Content.ReadAsStreamAsync(cancellationToken).ConfigureAwait(false);
            byte[] buffer = new byte[1 << 20];
            long done = resumed ? offset : 0;
            int read;
            while ((read = await body.ReadAsync(buffer, cancellationToken).ConfigureAwait(false)) > 0)
            {
                await output.WriteAsync(buffer.AsMemory(0, read), cancellationToken).ConfigureAwait(false);
                done += read;
                Progress?.Report(new HubProgress(file, done, size));
            }

            return;
        }
    }

    // LFS files: the etag is the SHA-256 of the content; git files: the SHA-1 of "blob <size>\0" + content.
    private static bool Verify(string path, string etag)
    {
        using FileStream stream = File.OpenRead(path);
        if (etag.Length == 64)
        {
            return Convert.ToHexStringLower(SHA256.HashData(stream)) == etag.ToLowerInvariant();
        }

        if (etag.Length == 40)
        {
            using var sha1 = IncrementalHash.CreateHash(HashAlgorithmName.SHA1);
            sha1.AppendData(Encoding.ASCII.GetBytes($"blob {stream.Length}\0"));
            byte[] buffer = new byte[1 << 20];
            int read;
            while ((read = stream.Read(buffer)) > 0)
            {
                sha1.AppendData(buffer, 0, read);
            }

            return Convert.ToHexStringLower(sha1.GetHashAndReset()) == etag.ToLowerInvariant();
        }

        return true; // another etag scheme (a mirror): the size check is all there is
    }

    private static async Task<FileStream> Lock(string path, CancellationToken cancellationToken)
    {
        while (true)
        {
            try
            {
                return new FileStream(path, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None, 1, FileOptions.DeleteOnClose);
            }
            catch (IOException)
            {
                await Task.Delay(50, cancellationToken).ConfigureAwait(false); // another download of this blob holds it
            }
        }
    }

    private static void Link(string snapshotFile, string blob)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(snapshotFile)!);
        if (File.Exists(snapshotFile))
        {
            return;
        }

        string temp = snapshotFile + "." + Guid.NewGuid().ToString("N") + ".tmp";
        try
        {
            File.CreateSymbolicLink(temp, Path.GetRelativePath(Path.GetDirectoryName(snapshotFile)!, blob));
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or PlatformNotSupportedException)
        {
            File.Copy(blob, temp); // no symlinks here (Windows without the privilege): a copy, as huggingface_hub falls back to
        }

        try
        {
            File.Move(temp, snapshotFile, overwrite: false);
        }
        catch (IOException) when (File.Exists(snapshotFile))
        {
            File.Delete(temp); // a concurrent download linked it first
        }
    }

    private void Authorize(HttpRequestMessage request)
    {
        if (_token is { Length: > 0 })
        {
            request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", _token);
        }
    }

    private static void Check(HttpResponseMessage response, string repo, string revision, string file)
    {
        string where = revision.Length > 0 ? $"{repo}@{revision}: {file}" : $"{repo} ({file})";
        switch ((int)response.StatusCode)
        {
            case 401 or 403:
                throw new HubDownloadException($"{where}: the Hub refused access ({(int)response.StatusCode}); the repository is gated or private — set HF_TOKEN to a token that may read it");
            case 404:
                throw new HubDownloadException($"{where}: not found (404) — check the repository id, the revision and that it has this file");
            case >= 200 and < 400:
                return;
            default:
                throw new HubDownloadException($"{where}: the server answered {(int)response.StatusCode} {response.ReasonPhrase}");
        }
    }

    private static string? Header(HttpResponseMessage response, string name) =>
        response.Headers.TryGetValues(name, out IEnumerable<string>? values) ? values.FirstOrDefault() : null;

    private static bool SafeName(string s) => s.Length is > 0 and <= 128 && s.All(c => char.IsAsciiLetterOrDigit(c) || c is '-' or '_' or '.') && s is not "." and not "..";

    private static IEnumerable<string> Shards(string indexPath)
    {
        using JsonDocument doc = JsonDocument.Parse(File.ReadAllText(indexPath));
        if (!doc.RootElement.TryGetProperty("weight_map", out JsonElement map) || map.ValueKind != JsonValueKind.Object)
        {
            throw new HubDownloadException($"{indexPath}: no weight_map object");
        }

        return [.. map.EnumerateObject().Select(p => p.Value.GetString() ?? throw new HubDownloadException($"{indexPath}: weight_map value of {p.Name} is not a string")).Distinct(StringComparer.Ordinal).Order(StringComparer.Ordinal)];
    }

    /// <summary>Frees the HTTP client.</summary>
    public void Dispose() => _http.Dispose();
}
