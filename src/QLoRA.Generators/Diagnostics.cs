using System.Collections.Generic;
using System.Linq;
using Microsoft.CodeAnalysis;

namespace QLoRA.Generators;

/// <summary>The generator's diagnostics (documented in docs/diagnostics.md).</summary>
internal static class Diagnostics
{
    private const string Category = "QLoRA.Modeling";

    public static readonly DiagnosticDescriptor ClassNotPartial = Create("QLR0001", "Model class must be partial", "'{0}' must be declared partial so the generator can implement its layers");
    public static readonly DiagnosticDescriptor PropertyNotPartial = Create("QLR0002", "Layer property must be partial", "Layer property '{0}' must be declared 'public partial {1} {0} {{ get; }}'");
    public static readonly DiagnosticDescriptor UnsupportedType = Create("QLR0003", "Layer attribute on an unsupported member type", "[{0}] on '{1}' needs type {2}, not {3}");
    public static readonly DiagnosticDescriptor InvalidDimension = Create("QLR0004", "Invalid dimension", "Dimension '{0}' of '{1}' must be a positive integer constant or a config.json field name");
    public static readonly DiagnosticDescriptor InvalidBlockSize = Create("QLR0005", "Invalid block size", "Block size {0} of '{1}' must be a power of two from 32 to 4096");
    public static readonly DiagnosticDescriptor InvalidRank = Create("QLR0006", "Invalid LoRA rank", "LoRA rank {0} of '{1}' must be positive and at most min(in, out) = {2}");
    public static readonly DiagnosticDescriptor DuplicateName = Create("QLR0007", "Duplicate checkpoint name", "'{0}' and '{1}' both map to checkpoint name '{2}'");
    public static readonly DiagnosticDescriptor StorageWithoutLayer = Create("QLR0008", "Storage or LoRA attribute without a layer attribute", "[{0}] on '{1}' needs a [Linear] attribute beside it");
    public static readonly DiagnosticDescriptor InvalidStackCount = Create("QLR0009", "Invalid stack count", "[Stack] count of '{0}' must be a positive integer or a config.json field name, not {1}");

    public static readonly DiagnosticDescriptor MissingTensor = Create("QLR0010", "Declared tensor missing from the weights", "'{0}' ({1}) is not in weights '{2}' ({3})");
    public static readonly DiagnosticDescriptor ShapeMismatch = Create("QLR0011", "Declared shape differs from the weights", "'{0}' ({1}) has shape {2} in weights '{3}' but the model declares {4}");
    public static readonly DiagnosticDescriptor StorageMismatch = Create("QLR0012", "Declared storage differs from the weights", "'{0}' ({1}) is stored {2} in weights '{3}' but the model declares {4}");
    public static readonly DiagnosticDescriptor UnreadableManifest = Create("QLR0013", "Unreadable weights manifest", "Weights manifest '{0}' could not be read: {1}");
    public static readonly DiagnosticDescriptor UnknownWeights = Create("QLR0014", "No weights manifest by that name", "'{0}' names weights '{1}', but this build has manifests only for {2}: the checks against the weights are skipped", DiagnosticSeverity.Warning);

    public static readonly DiagnosticDescriptor NotAnEngineModel = Create("QLR0015", "Model the engine cannot run", "'{0}' loads, but the training and inference engine cannot run it (no ToEngineModel() is generated): {1}", DiagnosticSeverity.Warning);

    public static readonly IReadOnlyDictionary<string, DiagnosticDescriptor> ById = new[]
    {
        ClassNotPartial, PropertyNotPartial, UnsupportedType, InvalidDimension, InvalidBlockSize, InvalidRank, DuplicateName, StorageWithoutLayer, InvalidStackCount,
        MissingTensor, ShapeMismatch, StorageMismatch, UnreadableManifest, UnknownWeights, NotAnEngineModel,
    }.ToDictionary(d => d.Id);

    private static DiagnosticDescriptor Create(string id, string title, string message, DiagnosticSeverity severity = DiagnosticSeverity.Error) =>
        // No help link: the project has no published address; the description names the page in the repository instead.
        new(id, title, message, Category, severity, isEnabledByDefault: true,
            description: $"{title}. What it means and how to fix it: docs/diagnostics.md#{id.ToLowerInvariant()} in the QLoRA.Sdk repository.");
}
