using QLoRA.Build.Tasks;

namespace QLoRA.Build.Tests;

/// <summary>The glob check behind QLR1012, against files laid out on disk.</summary>
public class WeightsPatternsTests
{
    private static string Layout()
    {
        string root = Directory.CreateTempSubdirectory("qlora-glob-").FullName;
        foreach (string file in new[] { "weights/a/model.safetensors", "weights/b/deep/x.safetensors", "weights/c.json", "top.safetensors" })
        {
            Directory.CreateDirectory(Path.GetDirectoryName(Path.Combine(root, file))!);
            File.WriteAllText(Path.Combine(root, file), "x");
        }

        return root;
    }

    [Theory]
    [InlineData("weights/a/*.safetensors", true)]
    [InlineData("weights/a/*.safetensor", false)]
    [InlineData("weights/*/model.safetensors", true)]
    [InlineData("weights/*/x.safetensors", false)]          // one level only: x is two levels down
    [InlineData("weights/**/x.safetensors", true)]
    [InlineData("weights/**/*.safetensors", true)]
    [InlineData("**/c.json", true)]
    [InlineData("weights/**", true)]
    [InlineData("weights/?/model.safetensors", true)]
    [InlineData("weights/??/model.safetensors", false)]
    [InlineData("*.safetensors", true)]
    [InlineData("missing/*.safetensors", false)]
    [InlineData("weights\\a\\*.safetensors", true)]
    [InlineData("weights/a/model.*", true)]
    [InlineData("weights/a/model.safetensors.*", false)]
    public void MatchesAsMSBuildGlobs(string pattern, bool expected)
    {
        Assert.Equal(expected, WeightsPatterns.MatchesAnyFile(pattern, Layout()));
    }

    [Fact]
    public void ReadsOnlyUnconditionedWildcardIncludesWithTheirLines()
    {
        string root = Directory.CreateTempSubdirectory("qlora-glob-").FullName;
        string project = Path.Combine(root, "p.csproj");
        File.WriteAllText(project, """
            <Project>
              <ItemGroup>
                <QLoRAWeights Include="a/*.safetensors;b/model.safetensors" />
                <QLoRAWeights Include="$(Dir)/*.safetensors" />
                <QLoRAWeights Include="c/*.safetensors" Condition="'$(X)' == ''" />
              </ItemGroup>
              <ItemGroup Condition="true">
                <QLoRAWeights Include="d/*.safetensors" />
              </ItemGroup>
              <ItemGroup>
                <QLoRAWeights Include="e/**/*.safetensors" />
              </ItemGroup>
            </Project>
            """);
        WeightsPattern[] found = [.. WeightsPatterns.Read(project)];
        Assert.Equal([new WeightsPattern("a/*.safetensors", project, 3, 6), new WeightsPattern("e/**/*.safetensors", project, 11, 6)], found);
    }
}
