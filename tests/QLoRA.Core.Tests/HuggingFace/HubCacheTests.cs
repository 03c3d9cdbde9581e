using QLoRA.Core.HuggingFace;

namespace QLoRA.Core.Tests.HuggingFace;

/// <summary>The hub cache as huggingface_hub lays it out: refs to commits, snapshots by commit, environment precedence.</summary>
public class HubCacheTests
{
    [Fact]
    public void IdsResolveThroughRefsToSnapshotsAndFoldersStayFolders()
    {
        string root = Directory.CreateTempSubdirectory("qlora-hub-").FullName;
        string main = new('a', 40), tagged = new('b', 40);
        string repo = Path.Combine(root, "models--acme--tiny-llama");
        Directory.CreateDirectory(Path.Combine(repo, "refs"));
        Directory.CreateDirectory(Path.Combine(repo, "snapshots", main));
        Directory.CreateDirectory(Path.Combine(repo, "snapshots", tagged));
        File.WriteAllText(Path.Combine(repo, "refs", "main"), main + "\n");
        File.WriteAllText(Path.Combine(repo, "refs", "v1"), tagged);

        Assert.Equal(Path.Combine(repo, "snapshots", main), HubCache.Resolve("acme/tiny-llama", root));
        Assert.Equal(Path.Combine(repo, "snapshots", tagged), HubCache.Resolve("acme/tiny-llama@v1", root));
        Assert.Equal(Path.Combine(repo, "snapshots", tagged), HubCache.Resolve($"acme/tiny-llama@{tagged}", root)); // a commit directly
        Assert.Equal(Path.GetFullPath(repo), HubCache.Resolve(repo, root)); // a folder is a folder

        var e = Assert.Throws<DirectoryNotFoundException>(() => HubCache.Resolve("acme/other", root));
        Assert.Contains("models--acme--other", e.Message);
        Assert.Contains("huggingface-cli download acme/other", e.Message);
        Assert.Throws<DirectoryNotFoundException>(() => HubCache.Resolve("acme/tiny-llama@v2", root));
        Assert.Throws<DirectoryNotFoundException>(() => HubCache.Resolve("not an id", root));
    }

    [Fact]
    public void TheCacheIsHfHubCacheThenHfHomeThenTheUsersCache()
    {
        Assert.Equal("/x/hub-cache", HubCache.Root(n => n == "HF_HUB_CACHE" ? "/x/hub-cache" : n == "HF_HOME" ? "/y" : null));
        Assert.Equal(Path.Combine("/y", "hub"), HubCache.Root(n => n == "HF_HOME" ? "/y" : null));
        Assert.Equal(Path.Combine("/z", "huggingface", "hub"), HubCache.Root(n => n == "XDG_CACHE_HOME" ? "/z" : null));
        Assert.EndsWith(Path.Combine(".cache", "huggingface", "hub"), HubCache.Root(_ => null));
    }
}
