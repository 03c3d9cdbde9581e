namespace QLoRA.Text.Data;

/// <summary>
/// Packs training examples into rows of at most a token budget: best-fit decreasing over example lengths (each row
/// is filled as tightly as the examples allow), deterministic for the same input. An example longer than the budget
/// gets a row of its own, cut to the budget.
/// </summary>
public static class Packer
{
    /// <summary>Packs <paramref name="examples"/> into rows of at most <paramref name="tokenBudget"/> tokens.</summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="tokenBudget"/> is below 2.</exception>
    public static List<PackedBatch> Pack(IReadOnlyList<TrainingExample> examples, int tokenBudget)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(tokenBudget, 2);
        // Longest first; ties keep the dataset order so the result depends only on the input.
        var order = Enumerable.Range(0, examples.Count)
            .OrderByDescending(i => Math.Min(examples[i].InputIds.Length, tokenBudget)).ThenBy(i => i).ToList();
        var rows = new List<(int Free, List<int> Members)>();
        var byFree = new SortedSet<(int Free, int Row)>();
        foreach (int i in order)
        {
            int length = Math.Min(examples[i].InputIds.Length, tokenBudget);
            // The fullest row that still has room (smallest free ≥ length).
            var view = byFree.GetViewBetween((length, -1), (int.MaxValue, int.MaxValue));
            if (view.Count > 0)
            {
                var (free, row) = view.Min;
                byFree.Remove((free, row));
                rows[row].Members.Add(i);
                rows[row] = (free - length, rows[row].Members);
                byFree.Add((free - length, row));
            }
            else
            {
                rows.Add((tokenBudget - length, [i]));
                byFree.Add((tokenBudget - length, rows.Count - 1));
            }
        }
        return rows.Select(r => Build(r.Members.Select(i => examples[i]).ToList(), tokenBudget)).ToList();
    }

    /// <summary>Packs the given examples, in order, into one row (each cut to <paramref name="tokenBudget"/>).</summary>
    public static PackedBatch Build(IReadOnlyList<TrainingExample> members, int tokenBudget = int.MaxValue)
    {
        int total = members.Sum(m => Math.Min(m.InputIds.Length, tokenBudget));
        var ids = new int[total];
        var labels = new int[total];
        var positions = new int[total];
        var cumulative = new int[members.Count + 1];
        int at = 0;
        for (int k = 0; k < members.Count; k++)
        {
            var m = members[k];
            int n = Math.Min(m.InputIds.Length, tokenBudget);
            for (int t = 0; t < n; t++)
            {
                ids[at + t] = m.InputIds[t];
                positions[at + t] = t;
                // Position t predicts token t+1 of the same example; the last position of an example predicts nothing.
                labels[at + t] = t + 1 < n && m.TrainMask[t + 1] ? m.InputIds[t + 1] : PackedBatch.IgnoreIndex;
            }
            at += n;
            cumulative[k + 1] = at;
        }
        return new PackedBatch(ids, labels, positions, cumulative);
    }
}
