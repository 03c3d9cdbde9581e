using QLoRA.Runtime.Engine;

namespace QLoRA.Runtime.Tests;

/// <summary>
/// Packing: targets never cross a sequence boundary and positions restart at each one. (The loss cannot show the
/// positions: RoPE's scores depend only on position differences, so this is checked here, directly.)
/// </summary>
public sealed class PackedBatchTests
{
    [Fact]
    public void NextTokenTargetsStopAtEachSequenceAndPositionsRestart()
    {
        PackedBatch batch = PackedBatch.ForNextToken([[5, 6, 7], [8], [9, 10]]);
        Assert.Equal([5, 6, 7, 8, 9, 10], batch.Ids);
        Assert.Equal([6, 7, -100, -100, 10, -100], batch.Labels);
        Assert.Equal([0, 3, 4, 6], batch.Boundaries);
        Assert.Equal([0, 1, 2, 0, 0, 1], batch.Positions());
        Assert.Equal(3, batch.TargetTokens);
        Assert.Equal(3, batch.Sequences);
    }

    [Fact]
    public void MalformedBatchesAreRejectedWithWhatIsWrong()
    {
        Assert.Contains("from 0 to 3", Assert.Throws<ArgumentException>(() => new PackedBatch([1, 2, 3], [1, 2, 3], [0, 2])).Message);
        Assert.Contains("must increase", Assert.Throws<ArgumentException>(() => new PackedBatch([1, 2, 3], [1, 2, 3], [0, 2, 2, 3])).Message);
        Assert.Contains("2 labels for 3 tokens", Assert.Throws<ArgumentException>(() => new PackedBatch([1, 2, 3], [1, 2], [0, 3])).Message);
        Assert.Throws<ArgumentException>(() => PackedBatch.ForNextToken([[1], []]));
        Assert.Throws<ArgumentException>(() => new PackedBatch([], [], [0]));
    }
}
