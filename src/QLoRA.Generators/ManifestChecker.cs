using System.Collections.Generic;
using System.Collections.Immutable;
using System.Linq;

namespace QLoRA.Generators;

/// <summary>
/// Checks a [CausalLM(Weights = "X")] model, its blocks expanded, against the manifest of weights X passed as an
/// AdditionalFile: every declared tensor present (tied ones excepted), shapes equal (config-named dimensions resolved
/// from the manifest's config), storage as declared.
/// </summary>
internal static class ManifestChecker
{
    public static EquatableArray<DiagnosticInfo> Check(ParseResult root, ImmutableArray<ClassModel?> blocks, ImmutableArray<ManifestModel> manifests)
    {
        var diagnostics = new List<DiagnosticInfo>();
        if (root.Model is not ClassModel model || model.Weights is not string weights)
        {
            return default;
        }

        foreach (ManifestModel broken in manifests.Where(m => m.Error is not null))
        {
            diagnostics.Add(DiagnosticInfo.Create(Diagnostics.UnreadableManifest, model.Location, broken.Path, broken.Error!));
        }

        ManifestModel? manifest = manifests.FirstOrDefault(m => m.Error is null && m.Model == weights);
        if (manifest is null)
        {
            // No manifest at all: the weights are not built into this compilation and are checked at load time. Other
            // manifests but not this one: most likely a misspelt name, which would silently skip every check.
            var known = manifests.Where(m => m.Error is null).Select(m => "'" + m.Model + "'").Distinct().OrderBy(n => n, System.StringComparer.Ordinal).ToList();
            if (known.Count > 0)
            {
                diagnostics.Add(DiagnosticInfo.Create(Diagnostics.UnknownWeights, model.Location, model.Name, weights, string.Join(", ", known)));
            }

            return new EquatableArray<DiagnosticInfo>(diagnostics.ToImmutableArray());
        }

        var tensors = manifest.Tensors.ToDictionary(t => t.Name);
        var config = manifest.Config.ToDictionary(f => f.Name, f => f.Value);
        var blockModels = blocks.Where(b => b is not null).ToDictionary(b => "global::" + b!.FullName, b => b!);
        Visit(model, "", model.Name, manifest, tensors, config, blockModels, diagnostics, depth: 0);
        return new EquatableArray<DiagnosticInfo>(OncePerCause(diagnostics).ToImmutableArray());
    }

    // A block's layer repeats in every layer of its stack: one diagnostic per distinct cause (descriptor, declaration,
    // arguments with the layer index taken out), not one per layer. The first layer's names stay in the message.
    private static readonly System.Text.RegularExpressions.Regex LayerIndex = new(@"(?<=\.)\d+(?=\.)|(?<=\[)\d+(?=\])");

    private static IEnumerable<DiagnosticInfo> OncePerCause(List<DiagnosticInfo> diagnostics)
    {
        var seen = new HashSet<string>();
        foreach (DiagnosticInfo d in diagnostics)
        {
            string key = d.Id + "|" + d.FilePath + "|" + d.Span.Start + "|" + string.Join("|", d.Arguments.Select(a => LayerIndex.Replace(a, "*")));
            if (seen.Add(key))
            {
                yield return d;
            }
        }
    }

    private static void Visit(ClassModel model, string prefix, string path, ManifestModel manifest, Dictionary<string, ManifestTensorModel> tensors, Dictionary<string, double> config,
        Dictionary<string, ClassModel> blocks, List<DiagnosticInfo> diagnostics, int depth)
    {
        if (depth > 8)
        {
            return;
        }

        foreach (LayerModel layer in model.Layers)
        {
            string owner = $"{path}.{layer.Property}";
            if (layer.Kind == LayerKind.Stack)
            {
                int? count = Resolve(layer.First!, config);
                if (count is int n && blocks.TryGetValue(layer.BlockType!, out ClassModel? block))
                {
                    for (int i = 0; i < n; i++)
                    {
                        Visit(block, $"{prefix}{layer.CheckpointName}.{i}.", $"{owner}[{i}]", manifest, tensors, config, blocks, diagnostics, depth + 1);
                    }
                }

                continue;
            }

            string name = prefix + layer.CheckpointName + ".weight";
            if (!tensors.TryGetValue(name, out ManifestTensorModel? tensor))
            {
                if (!manifest.Tied.Contains(name) && !(layer.TiedTo is string tied && tensors.ContainsKey(tied + ".weight")))
                {
                    diagnostics.Add(DiagnosticInfo.Create(Diagnostics.MissingTensor, layer.Location, name, owner, manifest.Model, manifest.Path));
                }

                continue;
            }

            long?[] expected = layer.Kind switch
            {
                LayerKind.RmsNorm => [Resolve(layer.First!, config)],
                LayerKind.Embedding => [Resolve(layer.First!, config), Resolve(layer.Second!, config)],
                _ => [Resolve(layer.Second!, config), Resolve(layer.First!, config)], // Linear(in, out) stores [out, in]
            };
            bool shapeDiffers = expected.Length != tensor.Shape.Count || expected.Zip(tensor.Shape, (e, a) => e is long v && v != a).Any(x => x);
            if (shapeDiffers)
            {
                string declared = "[" + string.Join(", ", expected.Select((e, i) => e?.ToString(System.Globalization.CultureInfo.InvariantCulture) ?? "?")) + "]";
                diagnostics.Add(DiagnosticInfo.Create(Diagnostics.ShapeMismatch, layer.Location, name, owner, "[" + string.Join(", ", tensor.Shape) + "]", manifest.Model, declared));
                continue;
            }

            bool storedQuantized = tensor.Stored is "nf4" or "fp4";
            string stored = storedQuantized ? $"{tensor.Stored} (block {tensor.BlockSize})" : tensor.Stored;
            string want = layer.Kind == LayerKind.QuantizedLinear ? $"{layer.Storage} (block {layer.BlockSize})" : "dense (bf16/f16/f32)";
            bool mismatch = layer.Kind == LayerKind.QuantizedLinear
                ? storedQuantized && (tensor.Stored != layer.Storage || tensor.BlockSize != layer.BlockSize)
                : storedQuantized;
            if (mismatch)
            {
                diagnostics.Add(DiagnosticInfo.Create(Diagnostics.StorageMismatch, layer.Location, name, owner, stored, manifest.Model, want));
            }
        }
    }

    // Config fields, plus the runtime's derived names (head_dim, q_dim, kv_dim) computed the same way.
    private static int? Resolve(Dimension dimension, Dictionary<string, double> config) =>
        dimension.IsConstant ? dimension.Value : Field(dimension.Field, config);

    private static int? Field(string name, Dictionary<string, double> config)
    {
        if (config.TryGetValue(name, out double v))
        {
            return (int)v;
        }

        return name switch
        {
            "head_dim" => Field("hidden_size", config) / Field("num_attention_heads", config),
            "q_dim" => Field("num_attention_heads", config) * Field("head_dim", config),
            "kv_dim" => (Field("num_key_value_heads", config) ?? Field("num_attention_heads", config)) * Field("head_dim", config),
            _ => null,
        };
    }
}
