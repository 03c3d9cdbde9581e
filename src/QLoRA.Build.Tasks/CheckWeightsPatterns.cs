using System.Xml;
using Microsoft.Build.Framework;

namespace QLoRA.Build.Tasks;

/// <summary>
/// MSBuild task: a wildcard <c>QLoRAWeights</c> Include that matches no file is error QLR1012 naming the pattern, its
/// file and line (MSBuild itself drops such an item silently, and the build would succeed with no weights).
/// </summary>
public sealed class CheckWeightsPatterns : Microsoft.Build.Utilities.Task
{
    /// <summary>The project file and the files it imports that may declare QLoRAWeights (Directory.Build.props/targets).</summary>
    [Required]
    public ITaskItem[] ProjectFiles { get; set; } = [];

    /// <summary>The folder Includes are relative to: the project's directory, also for items written in imported files.</summary>
    [Required]
    public string ProjectDirectory { get; set; } = "";

    /// <inheritdoc />
    public override bool Execute()
    {
        foreach (ITaskItem file in ProjectFiles)
        {
            string path = file.GetMetadata("FullPath");
            if (!File.Exists(path))
            {
                continue;
            }

            try
            {
                foreach (WeightsPattern pattern in WeightsPatterns.Read(path))
                {
                    if (!WeightsPatterns.MatchesAnyFile(pattern.Pattern, ProjectDirectory))
                    {
                        Log.LogError("QLoRA", BuildErrorCodes.PatternMatchesNothing, null, pattern.File, pattern.Line, pattern.Column, 0, 0,
                            $"QLoRAWeights Include '{pattern.Pattern}' matches no file (relative to {ProjectDirectory})");
                    }
                }
            }
            catch (Exception e) when (e is XmlException or IOException or UnauthorizedAccessException)
            {
                // MSBuild has parsed these files already; one we cannot re-read is left to it rather than failing here.
                Log.LogMessage(MessageImportance.Low, $"QLoRA: not checking QLoRAWeights patterns in {path}: {e.Message}");
            }
        }

        return !Log.HasLoggedErrors;
    }
}
