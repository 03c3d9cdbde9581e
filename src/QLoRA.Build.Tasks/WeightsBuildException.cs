namespace QLoRA.Build.Tasks;

/// <summary>A build error with its QLR code and the file at fault, reported by the task as an MSBuild error.</summary>
public sealed class WeightsBuildException(string code, string file, string message, Exception? inner = null) : Exception(message, inner)
{
    /// <summary>QLR1001…</summary>
    public string Code { get; } = code;

    /// <summary>The file the error is about.</summary>
    public string File { get; } = file;
}

/// <summary>The error codes of the build tasks (documented in docs/build-errors.md).</summary>
public static class BuildErrorCodes
{
    /// <summary>A weights file or the config is missing.</summary>
    public const string MissingFile = "QLR1001";

    /// <summary>A safetensors file (or shard index) is corrupt.</summary>
    public const string CorruptCheckpoint = "QLR1002";

    /// <summary>A tensor's dtype cannot be stored or quantized.</summary>
    public const string UnsupportedDtype = "QLR1003";

    /// <summary>config.json is invalid or describes a model the runtime cannot run.</summary>
    public const string InvalidConfig = "QLR1004";

    /// <summary>A tensor's shape disagrees with config.json.</summary>
    public const string ConfigMismatch = "QLR1005";

    /// <summary>Writing the output failed (disk full, permissions, …).</summary>
    public const string WriteFailed = "QLR1006";

    /// <summary>Invalid QLoRAWeights item metadata.</summary>
    public const string InvalidMetadata = "QLR1007";

    /// <summary>A tensor to be quantized holds NaN or ±Infinity.</summary>
    public const string NonFiniteWeights = "QLR1008";

    /// <summary>The same tensor name appears in two source files.</summary>
    public const string DuplicateTensor = "QLR1009";

    /// <summary>The build runs on .NET Framework MSBuild, which cannot load the tasks.</summary>
    public const string UnsupportedHost = "QLR1010";

    /// <summary>A QLoRAWeights Include names a folder with no .safetensors file in it (raised by the targets).</summary>
    public const string EmptyFolder = "QLR1011";

    /// <summary>A wildcard QLoRAWeights Include matches no file.</summary>
    public const string PatternMatchesNothing = "QLR1012";
}
