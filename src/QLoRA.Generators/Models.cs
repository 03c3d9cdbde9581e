using Microsoft.CodeAnalysis;
using Microsoft.CodeAnalysis.Text;

namespace QLoRA.Generators;

/// <summary>What a layer property is.</summary>
internal enum LayerKind
{
    Linear,
    QuantizedLinear,
    Embedding,
    RmsNorm,
    Stack,
}

/// <summary>A dimension: an integer constant, or the name of a config.json field.</summary>
internal sealed record Dimension(bool IsConstant, int Value, string Field)
{
    public string Emit() => IsConstant ? $"dims.Get({Value})" : $"dims.Get(\"{Field}\")";

    public override string ToString() => IsConstant ? Value.ToString(System.Globalization.CultureInfo.InvariantCulture) : Field;
}

/// <summary>Where something is declared, without syntax trees (equatable).</summary>
internal sealed record LocationInfo(string FilePath, TextSpan Span, LinePositionSpan LineSpan)
{
    public static LocationInfo? From(Location? location) =>
        location is null || location.SourceTree is null ? null : new LocationInfo(location.SourceTree.FilePath, location.SourceSpan, location.GetLineSpan().Span);

    public Location ToLocation() => Location.Create(FilePath, Span, LineSpan);
}

/// <summary>A declared LoRA point.</summary>
internal sealed record LoraModel(int Rank, double Alpha, double Dropout, bool UseRsLora);

/// <summary>One generated layer property (no symbols: equatable, cache-friendly).</summary>
internal sealed record LayerModel(
    string Property,
    string Type,
    LayerKind Kind,
    string CheckpointName,
    Dimension? First,
    Dimension? Second,
    string? BlockType,
    string? Storage,
    int BlockSize,
    bool DoubleQuant,
    LoraModel? Lora,
    LocationInfo? Location = null,
    string? TiedTo = null);

/// <summary>A generated class: a [CausalLM] root or a [Block].</summary>
internal sealed record ClassModel(string? Namespace, string Name, string Accessibility, bool IsRoot, string? Weights, EquatableArray<LayerModel> Layers, LocationInfo? Location = null)
{
    public string FullName => Namespace is null ? Name : $"{Namespace}.{Name}";
}

/// <summary>A diagnostic without symbols or syntax trees: descriptor id, location pieces and arguments.</summary>
internal sealed record DiagnosticInfo(string Id, string FilePath, TextSpan Span, LinePositionSpan LineSpan, EquatableArray<string> Arguments)
{
    public static DiagnosticInfo Create(DiagnosticDescriptor descriptor, LocationInfo? location, params string[] arguments) =>
        new(descriptor.Id, location?.FilePath ?? "", location?.Span ?? default, location?.LineSpan ?? default,
            new EquatableArray<string>(System.Collections.Immutable.ImmutableArray.Create(arguments)));

    public static DiagnosticInfo Create(DiagnosticDescriptor descriptor, Location? location, params string[] arguments) =>
        new(descriptor.Id, location?.SourceTree?.FilePath ?? "", location?.SourceSpan ?? default, location?.GetLineSpan().Span ?? default,
            new EquatableArray<string>(System.Collections.Immutable.ImmutableArray.Create(arguments)));

    public Diagnostic ToDiagnostic() =>
        Diagnostic.Create(Diagnostics.ById[Id], FilePath.Length == 0 && Span == default ? Location.None : Location.Create(FilePath, Span, LineSpan), [.. Arguments]);
}

/// <summary>The parse of one attributed class: a model to emit (if valid) and its diagnostics.</summary>
internal sealed record ParseResult(ClassModel? Model, EquatableArray<DiagnosticInfo> Diagnostics);
