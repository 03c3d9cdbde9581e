using System.Runtime.InteropServices;
using QLoRA.Runtime.Native;
using Device = QLoRA.Runtime.Devices.Device;

namespace QLoRA.Runtime.Tests;

/// <summary>
/// The driver-library fallback: a machine whose NVIDIA driver is installed as libcuda.so.1 alone must still give ILGPU
/// its CUDA devices. No driver is installed here, so a real shared library (zlib) copied under the driver's soname
/// stands in for it: what is checked is which names are answered and that the versioned file is what gets loaded.
/// </summary>
public class CudaDriverLibraryTests
{
    [Theory]
    [InlineData("cuda", true)]       // ILGPU's DllImport name on Linux
    [InlineData("libcuda.so", true)]
    [InlineData("nvcuda", true)]     // ILGPU's name on Windows
    [InlineData("libcublas.so.13", false)]
    [InlineData("cudart", false)]
    [InlineData("z", false)]
    public void OnlyTheDriversImportNamesAreAnswered(string name, bool driver) => Assert.Equal(driver, CudaDriverLibrary.IsDriverName(name));

    [Fact]
    public void AVersionedDriverLibraryIsFoundWhenTheUnversionedNameIsMissing()
    {
        string standIn = StandIn();
        Assert.False(CudaDriverLibrary.TryLoad(["/nonexistent/libcuda.so.1"], out _));
        Assert.True(CudaDriverLibrary.TryLoad(["/nonexistent/libcuda.so.1", standIn], out IntPtr handle));
        Assert.True(NativeLibrary.TryGetExport(handle, "zlibVersion", out _)); // the stand-in's own entry point: the file itself was loaded

        // The resolver hands the driver's import name the explicitly named file, and nothing to other libraries.
        IntPtr resolved = CudaDriverLibrary.Resolve("cuda", standIn);
        Assert.NotEqual(IntPtr.Zero, resolved);
        Assert.True(NativeLibrary.TryGetExport(resolved, "zlibVersion", out _));
        Assert.Equal(IntPtr.Zero, CudaDriverLibrary.Resolve("z", standIn));
        Assert.Equal(standIn, CudaDriverLibrary.Candidates(standIn).First());
        Assert.Contains("libcuda.so.1", CudaDriverLibrary.Candidates(null));
    }

    [Fact]
    public void CreatingADeviceInstallsTheFallbackFirst()
    {
        using Device device = Device.Cpu();
        Assert.True(CudaDriverLibrary.Installed);
    }

    // zlib is on every Linux machine this runs on; copied under the driver's file name into a fresh folder.
    private static string StandIn()
    {
        string? zlib = new[] { "/lib/x86_64-linux-gnu/libz.so.1", "/usr/lib/x86_64-linux-gnu/libz.so.1", "/lib64/libz.so.1", "/usr/lib64/libz.so.1", "/lib/aarch64-linux-gnu/libz.so.1" }
            .FirstOrDefault(File.Exists);
        Assert.NotNull(zlib);
        string folder = Directory.CreateTempSubdirectory("qlora-libcuda-").FullName;
        string path = Path.Combine(folder, "libcuda.so.1");
        File.Copy(zlib, path);
        return path;
    }
}
