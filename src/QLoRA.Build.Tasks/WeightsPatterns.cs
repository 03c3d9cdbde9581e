using System.Text;
using System.Text.RegularExpressions;
using System.Xml;
using System.Xml.Linq;

namespace QLoRA.Build.Tasks;

/// <summary>A wildcard <c>QLoRAWeights</c> Include written in a project file, with where it was written.</summary>
internal sealed record WeightsPattern(string Pattern, string File, int Line, int Column);

/// <summary>
/// Finds the wildcard <c>QLoRAWeights</c> Includes a project file writes and tells which match no file. MSBuild drops a
/// wildcard item that matches nothing, so after evaluation the build cannot tell "no weights" from "a mistyped glob";
/// the written patterns are read from the XML instead. Patterns it cannot evaluate on its own (ones that use
/// properties, item or metadata references or escapes, and items under a Condition) are left alone.
/// </summary>
internal static class WeightsPatterns
{
    /// <summary>The wildcard Includes of <c>QLoRAWeights</c> items in <paramref name="projectFile"/>.</summary>
    /// <exception cref="XmlException">The file is not well-formed XML (MSBuild reports that itself before we run).</exception>
    public static IEnumerable<WeightsPattern> Read(string projectFile)
    {
        XDocument document = XDocument.Load(projectFile, LoadOptions.SetLineInfo);
        foreach (XElement item in document.Descendants().Where(e => e.Name.LocalName == "QLoRAWeights"))
        {
            if (item.AncestorsAndSelf().Any(e => e.Attribute("Condition") is not null || e.Name.LocalName is "When" or "Otherwise")
                || item.Attribute("Include")?.Value is not { } include)
            {
                continue;
            }

            var position = (IXmlLineInfo)item;
            foreach (string part in include.Split(';', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
            {
                if (part.IndexOfAny(['*', '?']) >= 0 && !part.Contains("$(", StringComparison.Ordinal)
                    && !part.Contains("@(", StringComparison.Ordinal) && !part.Contains('%', StringComparison.Ordinal))
                {
                    yield return new WeightsPattern(part, projectFile, position.LineNumber, position.LinePosition);
                }
            }
        }
    }

    /// <summary>True when <paramref name="pattern"/> (MSBuild wildcards: <c>**</c>, <c>*</c>, <c>?</c>), taken relative to
    /// <paramref name="baseDirectory"/>, matches at least one file.</summary>
    public static bool MatchesAnyFile(string pattern, string baseDirectory)
    {
        string[] segments = pattern.Replace('\\', '/').Split('/');
        int firstWild = Array.FindIndex(segments, s => s.IndexOfAny(['*', '?']) >= 0);
        string root = Path.GetFullPath(Path.Combine(baseDirectory, string.Join('/', segments[..firstWild])));
        if (!Directory.Exists(root))
        {
            return false;
        }

        string[] rest = segments[firstWild..];
        var matcher = new Regex("^" + ToRegex(rest) + "$", RegexOptions.CultureInvariant | (OperatingSystem.IsWindows() ? RegexOptions.IgnoreCase : RegexOptions.None));
        var options = new EnumerationOptions { RecurseSubdirectories = rest.Length > 1, IgnoreInaccessible = true, AttributesToSkip = 0 };
        if (rest.Length > 1 && !rest.Contains("**"))
        {
            options.MaxRecursionDepth = rest.Length - 1;
        }

        return Directory.EnumerateFiles(root, "*", options)
            .Any(file => matcher.IsMatch(Path.GetRelativePath(root, file).Replace('\\', '/')));
    }

    private static string ToRegex(string[] segments)
    {
        var regex = new StringBuilder();
        for (int i = 0; i < segments.Length; i++)
        {
            bool last = i == segments.Length - 1;
            if (segments[i] == "**")
            {
                // Zero or more whole directories (a trailing ** matches every file below).
                regex.Append(last ? ".*" : "(?:[^/]+/)*");
                continue;
            }

            foreach (char c in segments[i])
            {
                regex.Append(c switch { '*' => "[^/]*", '?' => "[^/]", _ => Regex.Escape(c.ToString()) });
            }

            if (!last)
            {
                regex.Append('/');
            }
        }

        return regex.ToString();
    }
}
