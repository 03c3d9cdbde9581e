using System.Reflection;
using System.Runtime.InteropServices;
using System.Runtime.Loader;

namespace QLoRA.Runtime.Native;

/// <summary>
/// Finds the NVIDIA driver library (libcuda) for ILGPU and for the runtime's own driver-API calls (graphs, events).
/// ILGPU imports it as <c>cuda</c>, which .NET probes on Linux as <c>libcuda.so</c> — the unversioned name that only the
/// driver's development symlink provides. Containers and minimal driver installs often ship <c>libcuda.so.1</c> alone
/// (the soname every CUDA program loads), and then ILGPU sees no GPU at all and everything silently runs on the CPU.
/// <see cref="Install"/> adds a fallback, consulted only after .NET's own probing failed, that loads the versioned
/// library from the usual driver folders or from <c>QLORA_LIBCUDA</c>.
/// </summary>
internal static class CudaDriverLibrary
{
    /// <summary>Environment variable naming the driver library's full path, tried before the usual places.</summary>
    public const string EnvironmentVariable = "QLORA_LIBCUDA";

    private static int _installed;

    /// <summary>Registers the fallback once per process (before the first ILGPU context is created).</summary>
    public static void Install()
    {
        if (Interlocked.Exchange(ref _installed, 1) == 0)
        {
            AssemblyLoadContext.Default.ResolvingUnmanagedDll += OnResolving;
        }
    }

    /// <summary>Whether <see cref="Install"/> has run in this process.</summary>
    public static bool Installed => Volatile.Read(ref _installed) == 1;

    private static IntPtr OnResolving(Assembly assembly, string name) => Resolve(name, Environment.GetEnvironmentVariable(EnvironmentVariable));

    /// <summary>The driver library's handle for a DllImport of <paramref name="name"/>, or zero (another library, or no driver).</summary>
    internal static IntPtr Resolve(string name, string? explicitPath) =>
        IsDriverName(name) && TryLoad(Candidates(explicitPath), out IntPtr handle) ? handle : IntPtr.Zero;

    /// <summary>The names a DllImport of the driver library arrives under (ILGPU's <c>cuda</c>, and its probed variants).</summary>
    internal static bool IsDriverName(string name) => name is "cuda" or "libcuda" or "libcuda.so" or "nvcuda" or "nvcuda.dll";

    /// <summary>
    /// Where the driver library may be, in order: <paramref name="explicitPath"/> (QLORA_LIBCUDA), the loader's search
    /// path by soname, the NVIDIA container toolkit's mount, the distributions' library folders, WSL's, then Windows'.
    /// </summary>
    internal static IEnumerable<string> Candidates(string? explicitPath)
    {
        if (!string.IsNullOrWhiteSpace(explicitPath))
        {
            yield return explicitPath.Trim();
        }

        yield return "libcuda.so.1";
        yield return "/usr/local/nvidia/lib64/libcuda.so.1";
        yield return "/usr/lib/x86_64-linux-gnu/libcuda.so.1";
        yield return "/usr/lib64/libcuda.so.1";
        yield return "/usr/lib/aarch64-linux-gnu/libcuda.so.1";
        yield return "/usr/lib/wsl/lib/libcuda.so.1";
        yield return "nvcuda.dll";
    }

    /// <summary>Loads the first of <paramref name="candidates"/> that loads.</summary>
    internal static bool TryLoad(IEnumerable<string> candidates, out IntPtr handle)
    {
        foreach (string candidate in candidates)
        {
            if (NativeLibrary.TryLoad(candidate, out handle))
            {
                return true;
            }
        }

        handle = IntPtr.Zero;
        return false;
    }

    /// <summary>The driver library for direct driver-API calls, or false on machines without the NVIDIA driver.</summary>
    public static bool TryLoad(out IntPtr handle) => TryLoad(Candidates(Environment.GetEnvironmentVariable(EnvironmentVariable)), out handle);
}
