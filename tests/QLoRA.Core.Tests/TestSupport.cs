using System.Runtime.InteropServices;
using QLoRA.Core.Numerics;

namespace QLoRA.Core.Tests;

/// <summary>Seeded random data and temp folders for tests.</summary>
internal static class TestSupport
{
    /// <summary>Standard normal values (Box–Muller on a seeded generator), scaled.</summary>
    public static float[] Normal(int count, int seed, double scale = 1.0)
    {
        var rng = new Random(seed);
        var values = new float[count];
        for (int i = 0; i < count; i++)
        {
            double u1 = 1.0 - rng.NextDouble();
            double u2 = rng.NextDouble();
            values[i] = (float)(scale * Math.Sqrt(-2.0 * Math.Log(u1)) * Math.Cos(2.0 * Math.PI * u2));
        }

        return values;
    }

    /// <summary>Values rounded to bf16 (so bf16 and f32 inputs hold the same numbers).</summary>
    public static BFloat16[] ToBf16(float[] values) => values.Select(BFloat16.FromSingle).ToArray();

    public static byte[] Bytes<T>(T[] values)
        where T : unmanaged => MemoryMarshal.AsBytes(values.AsSpan()).ToArray();

    public static string TempDir()
    {
        string dir = Path.Combine(Path.GetTempPath(), "qlora-tests", Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(dir);
        return dir;
    }

    public static readonly int[] AllBlockSizes = [32, 64, 128, 256, 512, 1024, 2048, 4096];
}

/// <summary>Tests that change process-wide kernel settings run alone.</summary>
[CollectionDefinition("KernelPaths", DisableParallelization = true)]
public sealed class KernelPathsCollection;
