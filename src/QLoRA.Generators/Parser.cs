using System.Collections.Generic;
using System.Collections.Immutable;
using System.Linq;
using System.Text;
using System.Threading;
using Microsoft.CodeAnalysis;
using Microsoft.CodeAnalysis.CSharp;
using Microsoft.CodeAnalysis.CSharp.Syntax;

namespace QLoRA.Generators;

/// <summary>Turns an attributed class into a <see cref="ClassModel"/> (or diagnostics); the only place that sees symbols.</summary>
internal static class Parser
{
    private const string Ns = "QLoRA.Modeling.";
    private const string LayersNs = "QLoRA.Runtime.Layers.";

    public static ParseResult Parse(GeneratorAttributeSyntaxContext context, bool isRoot, CancellationToken cancellation)
    {
        var type = (INamedTypeSymbol)context.TargetSymbol;
        var declaration = (ClassDeclarationSyntax)context.TargetNode;
        var diagnostics = new List<DiagnosticInfo>();
        if (!declaration.Modifiers.Any(SyntaxKind.PartialKeyword))
        {
            diagnostics.Add(DiagnosticInfo.Create(Diagnostics.ClassNotPartial, declaration.Identifier.GetLocation(), type.Name));
            return new ParseResult(null, Wrap(diagnostics));
        }

        string? weights = isRoot
            ? context.Attributes[0].NamedArguments.Where(a => a.Key == "Weights").Select(a => a.Value.Value as string).FirstOrDefault()
            : null;
        var layers = new List<LayerModel>();
        var names = new Dictionary<string, string>();
        foreach (IPropertySymbol property in type.GetMembers().OfType<IPropertySymbol>())
        {
            cancellation.ThrowIfCancellationRequested();
            LayerModel? layer = ParseProperty(property, diagnostics);
            if (layer is null)
            {
                continue;
            }

            layer = layer with { Location = LocationInfo.From(property.Locations.FirstOrDefault()) };

            if (names.TryGetValue(layer.CheckpointName, out string? other))
            {
                diagnostics.Add(DiagnosticInfo.Create(Diagnostics.DuplicateName, property.Locations.FirstOrDefault(), other, property.Name, layer.CheckpointName));
                continue;
            }

            names[layer.CheckpointName] = property.Name;
            layers.Add(layer);
        }

        string? ns = type.ContainingNamespace.IsGlobalNamespace ? null : type.ContainingNamespace.ToDisplayString();
        string accessibility = type.DeclaredAccessibility == Accessibility.Public ? "public" : "internal";
        ClassModel? model = diagnostics.Count == 0 ? new ClassModel(ns, type.Name, accessibility, isRoot, weights, Wrap(layers), LocationInfo.From(declaration.Identifier.GetLocation())) : null;
        return new ParseResult(model, Wrap(diagnostics));
    }

    private static LayerModel? ParseProperty(IPropertySymbol property, List<DiagnosticInfo> diagnostics)
    {
        AttributeData? Find(string name) => property.GetAttributes().FirstOrDefault(a => a.AttributeClass?.ToDisplayString() == Ns + name);
        AttributeData? linear = Find("LinearAttribute"), embedding = Find("EmbeddingAttribute"), rmsNorm = Find("RmsNormAttribute"), stack = Find("StackAttribute");
        AttributeData? nf4 = Find("Nf4Attribute"), fp4 = Find("Fp4Attribute"), lora = Find("LoRAAttribute"), hfName = Find("HfNameAttribute");
        Location? location = property.Locations.FirstOrDefault();
        if (linear is null && embedding is null && rmsNorm is null && stack is null)
        {
            foreach ((AttributeData? attribute, string name) in new[] { (nf4, "Nf4"), (fp4, "Fp4"), (lora, "LoRA") })
            {
                if (attribute is not null)
                {
                    diagnostics.Add(DiagnosticInfo.Create(Diagnostics.StorageWithoutLayer, location, name, property.Name));
                }
            }

            return null;
        }

        string typeName = property.Type.ToDisplayString();
        if (!property.IsPartialDefinition)
        {
            diagnostics.Add(DiagnosticInfo.Create(Diagnostics.PropertyNotPartial, location, property.Name, typeName));
            return null;
        }

        string checkpoint = hfName?.ConstructorArguments.FirstOrDefault().Value as string ?? SnakeCase(property.Name);
        int before = diagnostics.Count;
        if (stack is not null)
        {
            Dimension? count = ReadDimension(stack.ConstructorArguments[0], "count", property, diagnostics, Diagnostics.InvalidStackCount);
            INamedTypeSymbol? element = (property.Type as IArrayTypeSymbol)?.ElementType as INamedTypeSymbol;
            if (element is null || !element.GetAttributes().Any(a => a.AttributeClass?.ToDisplayString() == Ns + "BlockAttribute"))
            {
                diagnostics.Add(DiagnosticInfo.Create(Diagnostics.UnsupportedType, location, "Stack", property.Name, "an array of a [Block] class", typeName));
                return null;
            }

            return diagnostics.Count > before ? null : new LayerModel(property.Name, "global::" + typeName, LayerKind.Stack, checkpoint, count, null, "global::" + element.ToDisplayString(), null, 0, false, null);
        }

        if (embedding is not null)
        {
            Dimension? vocab = ReadDimension(embedding.ConstructorArguments[0], "vocab", property, diagnostics, Diagnostics.InvalidDimension);
            Dimension? dim = ReadDimension(embedding.ConstructorArguments[1], "dim", property, diagnostics, Diagnostics.InvalidDimension);
            return RequireType(property, "Embedding", LayersNs + "EmbeddingLayer", diagnostics) && diagnostics.Count == before
                ? new LayerModel(property.Name, "global::" + typeName, LayerKind.Embedding, checkpoint, vocab, dim, null, null, 0, false, null)
                : null;
        }

        if (rmsNorm is not null)
        {
            Dimension? dim = ReadDimension(rmsNorm.ConstructorArguments[0], "dim", property, diagnostics, Diagnostics.InvalidDimension);
            return RequireType(property, "RmsNorm", LayersNs + "RmsNormLayer", diagnostics) && diagnostics.Count == before
                ? new LayerModel(property.Name, "global::" + typeName, LayerKind.RmsNorm, checkpoint, dim, null, null, null, 0, false, null)
                : null;
        }

        Dimension? inFeatures = ReadDimension(linear!.ConstructorArguments[0], "in", property, diagnostics, Diagnostics.InvalidDimension);
        Dimension? outFeatures = ReadDimension(linear.ConstructorArguments[1], "out", property, diagnostics, Diagnostics.InvalidDimension);
        AttributeData? storage = nf4 ?? fp4;
        int blockSize = storage is null ? 0 : Named(storage, "BlockSize", 64);
        bool doubleQuant = storage is null || Named(storage, "DoubleQuant", true);
        if (storage is not null && (blockSize < 32 || blockSize > 4096 || (blockSize & (blockSize - 1)) != 0))
        {
            diagnostics.Add(DiagnosticInfo.Create(Diagnostics.InvalidBlockSize, location, blockSize.ToString(System.Globalization.CultureInfo.InvariantCulture), property.Name));
        }

        LoraModel? loraModel = null;
        if (lora is not null)
        {
            loraModel = new LoraModel(Named(lora, "Rank", 64), Named(lora, "Alpha", 16.0), Named(lora, "Dropout", 0.05), Named(lora, "UseRsLora", false));
            int limit = inFeatures is { IsConstant: true } && outFeatures is { IsConstant: true } ? System.Math.Min(inFeatures.Value, outFeatures.Value) : int.MaxValue;
            if (loraModel.Rank <= 0 || loraModel.Rank > limit)
            {
                diagnostics.Add(DiagnosticInfo.Create(Diagnostics.InvalidRank, location, loraModel.Rank.ToString(System.Globalization.CultureInfo.InvariantCulture), property.Name, limit == int.MaxValue ? "min(in, out)" : limit.ToString(System.Globalization.CultureInfo.InvariantCulture)));
            }
        }

        bool quantized = storage is not null;
        string expected = LayersNs + (quantized ? "QuantizedLinear" : "Linear");
        if (!RequireType(property, "Linear", expected, diagnostics) || diagnostics.Count > before)
        {
            return null;
        }

        string? tiedTo = linear.NamedArguments.Where(a => a.Key == "TiedTo").Select(a => a.Value.Value as string).FirstOrDefault();
        return new LayerModel(property.Name, "global::" + typeName, quantized ? LayerKind.QuantizedLinear : LayerKind.Linear, checkpoint, inFeatures, outFeatures, null,
            storage is null ? null : nf4 is not null ? "nf4" : "fp4", blockSize, doubleQuant, loraModel, TiedTo: tiedTo);
    }

    private static bool RequireType(IPropertySymbol property, string attribute, string expected, List<DiagnosticInfo> diagnostics)
    {
        string actual = property.Type.ToDisplayString();
        if (actual == expected)
        {
            return true;
        }

        diagnostics.Add(DiagnosticInfo.Create(Diagnostics.UnsupportedType, property.Locations.FirstOrDefault(), attribute, property.Name, expected, actual));
        return false;
    }

    private static Dimension? ReadDimension(TypedConstant value, string what, IPropertySymbol property, List<DiagnosticInfo> diagnostics, DiagnosticDescriptor descriptor)
    {
        switch (value.Value)
        {
            case int i when i > 0:
                return new Dimension(true, i, "");
            case string s when s.Length > 0 && s.All(c => char.IsLetterOrDigit(c) || c == '_'):
                return new Dimension(false, 0, s);
        }

        string shown = value.IsNull ? "null" : value.ToCSharpString();
        diagnostics.Add(descriptor == Diagnostics.InvalidStackCount
            ? DiagnosticInfo.Create(descriptor, property.Locations.FirstOrDefault(), property.Name, shown)
            : DiagnosticInfo.Create(descriptor, property.Locations.FirstOrDefault(), $"{what} = {shown}", property.Name));
        return null;
    }

    private static T Named<T>(AttributeData attribute, string name, T fallback)
    {
        foreach (KeyValuePair<string, TypedConstant> argument in attribute.NamedArguments)
        {
            if (argument.Key == name && argument.Value.Value is T value)
            {
                return value;
            }
        }

        return fallback;
    }

    /// <summary>PascalCase → snake_case (QProj → q_proj, LmHead → lm_head, InputLayernorm → input_layernorm).</summary>
    public static string SnakeCase(string name)
    {
        var sb = new StringBuilder();
        for (int i = 0; i < name.Length; i++)
        {
            char c = name[i];
            if (char.IsUpper(c))
            {
                if (i > 0 && (char.IsLower(name[i - 1]) || (i + 1 < name.Length && char.IsLower(name[i + 1]) && char.IsUpper(name[i - 1]))))
                {
                    sb.Append('_');
                }

                sb.Append(char.ToLowerInvariant(c));
            }
            else
            {
                sb.Append(c);
            }
        }

        return sb.ToString();
    }

    private static EquatableArray<T> Wrap<T>(List<T> items)
        where T : System.IEquatable<T> => new(items.ToImmutableArray());
}
