using BenchmarkDotNet.Columns;
using BenchmarkDotNet.Reports;
using BenchmarkDotNet.Running;

namespace QLoRA.Bench;

/// <summary>GB/s of bf16 data processed per call, and that rate as a fraction of the baseline's (the read pass) in the same run.</summary>
public sealed class ThroughputColumn(bool relative) : IColumn
{
    public string Id => relative ? "ReadPassShare" : "Throughput";

    public string ColumnName => relative ? "% of read pass" : "GB/s (bf16)";

    public bool AlwaysShow => true;

    public ColumnCategory Category => ColumnCategory.Custom;

    public int PriorityInCategory => relative ? 1 : 0;

    public bool IsNumeric => true;

    public UnitType UnitType => UnitType.Dimensionless;

    public string Legend => relative
        ? "Throughput divided by the read pass's throughput measured in the same run"
        : "Bytes of bf16 tensor data (input for quantize, output for dequantize) per second, 1e9";

    public bool IsDefault(Summary summary, BenchmarkCase benchmarkCase) => false;

    public bool IsAvailable(Summary summary) => true;

    public string GetValue(Summary summary, BenchmarkCase benchmarkCase) => GetValue(summary, benchmarkCase, SummaryStyle.Default);

    public string GetValue(Summary summary, BenchmarkCase benchmarkCase, SummaryStyle style)
    {
        double? rate = Rate(summary, benchmarkCase);
        if (rate is null)
        {
            return "-";
        }

        if (!relative)
        {
            return rate.Value.ToString("0.00", System.Globalization.CultureInfo.InvariantCulture);
        }

        BenchmarkCase? baseline = summary.BenchmarksCases.FirstOrDefault(b => b.Descriptor.Baseline);
        double? reference = baseline is null ? null : Rate(summary, baseline);
        return reference is null ? "-" : (100 * rate.Value / reference.Value).ToString("0.0", System.Globalization.CultureInfo.InvariantCulture) + "%";
    }

    private static double? Rate(Summary summary, BenchmarkCase benchmarkCase)
    {
        if (benchmarkCase.Descriptor.Type != typeof(QuantizationThroughput)) return null;
        double? nanoseconds = summary[benchmarkCase]?.ResultStatistics?.Median;
        return nanoseconds is > 0 ? QuantizationThroughput.Bytes / nanoseconds.Value : null;
    }
}
