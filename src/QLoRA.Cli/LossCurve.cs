using System.Globalization;
using System.Text.Json.Nodes;

namespace QLoRA.Cli;

/// <summary>The loss curve of a run as a PNG (ScottPlot): training loss per step and, when logged, eval loss, from metrics.jsonl.</summary>
internal static class LossCurve
{
    /// <summary>Reads <paramref name="metricsPath"/> and writes <paramref name="pngPath"/> (atomically); false when there is nothing to plot.</summary>
    public static bool Write(string metricsPath, string pngPath)
    {
        var steps = new List<double>();
        var losses = new List<double>();
        var evalSteps = new List<double>();
        var evalLosses = new List<double>();
        foreach (string line in File.ReadLines(metricsPath))
        {
            if (JsonNode.Parse(line) is not JsonObject record || record["step"] is not JsonValue step)
            {
                continue;
            }

            if (record["loss"] is JsonValue loss && double.IsFinite(loss.GetValue<double>()))
            {
                steps.Add(step.GetValue<double>());
                losses.Add(loss.GetValue<double>());
            }
            else if (record["eval_loss"] is JsonValue evalLoss)
            {
                evalSteps.Add(step.GetValue<double>());
                evalLosses.Add(evalLoss.GetValue<double>());
            }
        }

        if (steps.Count == 0)
        {
            return false;
        }

        var plot = new ScottPlot.Plot();
        var train = plot.Add.Scatter(steps.ToArray(), losses.ToArray());
        train.LegendText = "train loss";
        train.MarkerSize = steps.Count > 50 ? 0 : 4;
        if (evalSteps.Count > 0)
        {
            var eval = plot.Add.Scatter(evalSteps.ToArray(), evalLosses.ToArray());
            eval.LegendText = "eval loss";
            eval.MarkerSize = 6;
            plot.ShowLegend();
        }

        plot.XLabel("step");
        plot.YLabel("loss");
        plot.Title(string.Create(CultureInfo.InvariantCulture, $"{steps.Count} steps: {losses[0]:F3} → {losses[^1]:F3}"));
        string temp = pngPath + ".tmp.png";
        plot.SavePng(temp, 800, 500);
        File.Move(temp, pngPath, overwrite: true);
        return true;
    }
}
