using System.Text;
using QLoRA.Core.HuggingFace;

namespace QLoRA.Core.Tests.HuggingFace;

/// <summary>The Hub client against a loopback imitation of the Hub: layout, redirects, resume, errors, concurrency, verification.</summary>
public sealed class HubDownloaderTests : IDisposable
{
    private readonly FakeHub _hub = new();
    private readonly string _cache = Directory.CreateTempSubdirectory("qlora-hub-").FullName;
    private readonly byte[] _weights = [.. Enumerable.Range(0, 300_000).Select(i => (byte)(i * 7 % 251))];
    private readonly byte[] _config = Encoding.UTF8.GetBytes("""{"model_type": "llama", "hidden_size": 64}""");

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    public HubDownloaderTests()
    {
        _hub.Add("org/tiny", "config.json", _config, lfs: false);
        _hub.Add("org/tiny", "tokenizer.json", Encoding.UTF8.GetBytes("{}"), lfs: false);
        _hub.Add("org/tiny", "model.safetensors", _weights, lfs: true);
    }

    private HubDownloader Downloader(string? token = null) => new(_hub.Endpoint, token, _cache, _ => null);

    [Fact]
    public async Task DownloadsIntoTheHubCacheLayoutThatResolveReads()
    {
        using HubDownloader downloader = Downloader();
        string snapshot = await downloader.DownloadModelAsync("org/tiny", Ct);
        string repo = Path.Combine(_cache, "models--org--tiny");
        Assert.Equal(Path.Combine(repo, "snapshots", FakeHub.Commit), snapshot);
        Assert.Equal(FakeHub.Commit, File.ReadAllText(Path.Combine(repo, "refs", "main")));
        Assert.Equal(_weights, File.ReadAllBytes(Path.Combine(snapshot, "model.safetensors")));
        Assert.Equal(_config, File.ReadAllBytes(Path.Combine(snapshot, "config.json")));
        Assert.False(File.Exists(Path.Combine(snapshot, "generation_config.json"))); // optional and absent: skipped

        // huggingface_hub's layout: snapshot entries are links to blobs named by etag.
        var link = new FileInfo(Path.Combine(snapshot, "model.safetensors"));
        Assert.NotNull(link.LinkTarget);
        Assert.True(File.Exists(Path.Combine(repo, "blobs", FakeHub.Sha256(_weights))));
        Assert.True(File.Exists(Path.Combine(repo, "blobs", FakeHub.GitSha1(_config))));
        Assert.Equal(snapshot, HubCache.Resolve("org/tiny", _cache));
        Assert.Contains(_hub.Requests, r => r.StartsWith("GET cdn/org/tiny/model.safetensors", StringComparison.Ordinal)); // followed the redirect

        // A second call finds everything in place: HEADs only.
        int gets = _hub.Requests.Count(r => r.StartsWith("GET", StringComparison.Ordinal));
        await downloader.DownloadModelAsync("org/tiny@main", Ct);
        Assert.Equal(gets, _hub.Requests.Count(r => r.StartsWith("GET", StringComparison.Ordinal)));
    }

    [Fact]
    public async Task ResumesACutTransferWithARangeRequest()
    {
        _hub.CutOnce["org/tiny/model.safetensors"] = 100_000;
        using HubDownloader downloader = Downloader();
        string snapshot = await downloader.DownloadModelAsync("org/tiny", Ct);
        Assert.Equal(_weights, File.ReadAllBytes(Path.Combine(snapshot, "model.safetensors")));
        Assert.Contains(_hub.Requests, r => r.StartsWith("GET cdn/org/tiny/model.safetensors bytes=", StringComparison.Ordinal));
        Assert.Empty(Directory.GetFiles(_cache, "*.incomplete", SearchOption.AllDirectories));
    }

    [Fact]
    public async Task PrivateRepositoriesNeedTheTokenAndErrorsNameWhatFailed()
    {
        _hub.Add("org/secret", "config.json", _config, lfs: false);
        _hub.Add("org/secret", "model.safetensors", _weights, lfs: true);
        _hub.Private.Add("org/secret");
        using (HubDownloader anonymous = Downloader())
        {
            var denied = await Assert.ThrowsAsync<HubDownloadException>(() => anonymous.DownloadModelAsync("org/secret", Ct));
            Assert.Contains("HF_TOKEN", denied.Message);
            Assert.Contains("401", denied.Message);
            var missing = await Assert.ThrowsAsync<HubDownloadException>(() => anonymous.DownloadModelAsync("org/nothing", Ct));
            Assert.Contains("org/nothing@main: config.json", missing.Message);
            Assert.Contains("404", missing.Message);
        }

        using HubDownloader authorized = Downloader(_hub.Token);
        string snapshot = await authorized.DownloadModelAsync("org/secret", Ct);
        Assert.Equal(_weights, File.ReadAllBytes(Path.Combine(snapshot, "model.safetensors")));
        Assert.DoesNotContain(_hub.Requests, r => r.StartsWith("GET cdn/", StringComparison.Ordinal) && r.EndsWith(" auth", StringComparison.Ordinal)); // not sent off the Hub
    }

    [Fact]
    public async Task ConcurrentDownloadsOfOneFileTransferItOnce()
    {
        var downloads = Enumerable.Range(0, 4).Select(_ => Task.Run(async () =>
        {
            using HubDownloader d = Downloader();
            return await d.DownloadModelAsync("org/tiny", Ct);
        }, Ct)).ToArray();
        string[] snapshots = await Task.WhenAll(downloads);
        Assert.All(snapshots, s => Assert.Equal(_weights, File.ReadAllBytes(Path.Combine(s, "model.safetensors"))));
        Assert.Equal(1, _hub.Requests.Count(r => r.StartsWith("GET cdn/org/tiny/model.safetensors", StringComparison.Ordinal)));
    }

    [Fact]
    public async Task CorruptBytesAreRejectedAndNothingIsLeft()
    {
        _hub.Corrupt.Add("org/tiny/model.safetensors");
        using HubDownloader downloader = Downloader();
        var e = await Assert.ThrowsAsync<HubDownloadException>(() => downloader.DownloadModelAsync("org/tiny", Ct));
        Assert.Contains("do not match the etag", e.Message);
        string repo = Path.Combine(_cache, "models--org--tiny");
        Assert.False(File.Exists(Path.Combine(repo, "blobs", FakeHub.Sha256(_weights))));
        Assert.False(File.Exists(Path.Combine(repo, "snapshots", FakeHub.Commit, "model.safetensors")));
        Assert.Empty(Directory.GetFiles(_cache, "*.incomplete", SearchOption.AllDirectories));
    }

    public void Dispose()
    {
        _hub.Dispose();
        Directory.Delete(_cache, recursive: true);
    }
}
