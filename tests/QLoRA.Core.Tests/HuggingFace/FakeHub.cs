using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Text;

namespace QLoRA.Core.Tests.HuggingFace;

/// <summary>
/// A loopback HTTP server imitating the Hugging Face Hub's resolve endpoint: HEAD/GET <c>/{repo}/resolve/{rev}/{file}</c>
/// with X-Repo-Commit, ETag (git blob SHA-1) for small files and, for LFS files, a 302 to a "CDN" on another host name with
/// X-Linked-Etag (SHA-256) and X-Linked-Size; Range requests; 401 for a private repository without the token; 404
/// otherwise; and, on demand, a body cut after some bytes (the connection closed mid-transfer).
/// </summary>
public sealed class FakeHub : IDisposable
{
    public const string Commit = "0123456789abcdef0123456789abcdef01234567";
    private readonly HttpListener _listener = new();
    private readonly Dictionary<string, (byte[] Data, bool Lfs)> _files = new(StringComparer.Ordinal);
    private readonly Task _loop;

    public FakeHub()
    {
        var probe = new TcpListener(IPAddress.Loopback, 0);
        probe.Start();
        int port = ((IPEndPoint)probe.LocalEndpoint).Port;
        probe.Stop();
        Endpoint = $"http://127.0.0.1:{port}";
        _listener.Prefixes.Add(Endpoint + "/");
        _listener.Prefixes.Add($"http://localhost:{port}/"); // the "CDN": another host name, as the Hub's LFS redirects go to
        _cdn = $"http://localhost:{port}";
        _listener.Start();
        _loop = Task.Run(Serve);
    }

    public string Endpoint { get; }

    private readonly string _cdn;

    /// <summary>Repositories that answer 401 unless the request carries "Bearer {Token}".</summary>
    public HashSet<string> Private { get; } = [];

    public string Token { get; } = "hf_test_token";

    /// <summary>Cut the next GET of a file's body after this many bytes (once).</summary>
    public ConcurrentDictionary<string, long> CutOnce { get; } = new();

    /// <summary>Serve wrong bytes for these files (a corrupt mirror).</summary>
    public HashSet<string> Corrupt { get; } = [];

    public ConcurrentQueue<string> Requests { get; } = new();

    public void Add(string repo, string file, byte[] data, bool lfs) => _files[$"{repo}/{file}"] = (data, lfs);

    public static string Sha256(byte[] data) => Convert.ToHexStringLower(SHA256.HashData(data));

    public static string GitSha1(byte[] data) => Convert.ToHexStringLower(SHA1.HashData([.. Encoding.ASCII.GetBytes($"blob {data.Length}\0"), .. data]));

    private async Task Serve()
    {
        while (_listener.IsListening)
        {
            HttpListenerContext context;
            try
            {
                context = await _listener.GetContextAsync();
            }
            catch (Exception e) when (e is HttpListenerException or ObjectDisposedException or InvalidOperationException)
            {
                return;
            }

            _ = Task.Run(() => Handle(context));
        }
    }

    private void Handle(HttpListenerContext context)
    {
        HttpListenerRequest request = context.Request;
        HttpListenerResponse response = context.Response;
        string path = Uri.UnescapeDataString(request.Url!.AbsolutePath.TrimStart('/'));
        Requests.Enqueue($"{request.HttpMethod} {path}{(request.Headers["Range"] is { } r ? " " + r : "")}{(request.Headers["Authorization"] is null ? "" : " auth")}");
        try
        {
            if (path.StartsWith("cdn/", StringComparison.Ordinal))
            {
                string blob = path["cdn/".Length..];
                Body(request, response, blob, _files[blob].Data);
                return;
            }

            // {org}/{name}/resolve/{rev}/{file…}
            string[] parts = path.Split('/', 5);
            if (parts.Length < 5 || parts[2] != "resolve")
            {
                response.StatusCode = 404;
                return;
            }

            string repo = $"{parts[0]}/{parts[1]}", key = $"{repo}/{parts[4]}";
            if (Private.Contains(repo) && request.Headers["Authorization"] != $"Bearer {Token}")
            {
                response.StatusCode = 401;
                return;
            }

            if (!_files.TryGetValue(key, out var file) || parts[3] is not ("main" or Commit))
            {
                response.StatusCode = 404;
                return;
            }

            response.Headers["X-Repo-Commit"] = Commit;
            if (file.Lfs)
            {
                response.Headers["X-Linked-Etag"] = "\"" + Sha256(file.Data) + "\"";
                response.Headers["X-Linked-Size"] = file.Data.Length.ToString(System.Globalization.CultureInfo.InvariantCulture);
                response.StatusCode = 302;
                response.RedirectLocation = $"{_cdn}/cdn/{key}";
                return;
            }

            response.Headers["ETag"] = "\"" + GitSha1(file.Data) + "\"";
            if (request.HttpMethod == "HEAD")
            {
                response.ContentLength64 = file.Data.Length;
                return;
            }

            Body(request, response, key, file.Data);
        }
        finally
        {
            try
            {
                response.Close();
            }
            catch (HttpListenerException)
            {
            }
        }
    }

    private void Body(HttpListenerRequest request, HttpListenerResponse response, string key, byte[] data)
    {
        if (Corrupt.Contains(key))
        {
            data = [.. data.Select(b => (byte)(b ^ 0x5A))];
        }

        long start = 0;
        if (request.Headers["Range"] is { } range && range.StartsWith("bytes=", StringComparison.Ordinal))
        {
            start = long.Parse(range["bytes=".Length..].TrimEnd('-'), System.Globalization.CultureInfo.InvariantCulture);
            response.StatusCode = 206;
            response.Headers["Content-Range"] = $"bytes {start}-{data.Length - 1}/{data.Length}";
        }

        response.ContentLength64 = data.Length - start;
        if (CutOnce.TryRemove(key, out long cut))
        {
            // Send part of the body, then drop the connection.
            response.OutputStream.Write(data, (int)start, (int)Math.Min(cut, data.Length - start));
            response.OutputStream.Flush();
            response.Abort();
            return;
        }

        response.OutputStream.Write(data, (int)start, (int)(data.Length - start));
    }

    public void Dispose()
    {
        _listener.Stop();
        _listener.Close();
        try
        {
            _loop.Wait(TimeSpan.FromSeconds(5));
        }
        catch (AggregateException)
        {
        }
    }
}
