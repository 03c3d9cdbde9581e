using ILGPU;

namespace QLoRA.Runtime.Kernels;

/// <summary>One row's sampling parameters as the kernel reads them (see <see cref="Generation.SamplingOptions"/>).</summary>
internal struct SamplingRow
{
    public float Temperature;   // ≤ 0: greedy
    public int TopK;            // 0: off
    public float TopP;          // ≥ 1: off
    public float MinP;          // ≤ 0: off
    public float Repetition;    // 1: off
    public float Presence;      // 0: off
    public float Frequency;     // 0: off
    public ulong Seed;
    public int Step;            // which draw of the sequence this is
    public int Slot;            // penalty-state row, −1: no penalties
    public int BiasStart;       // this row's entries in the logit-bias lists
    public int BiasCount;
}

/// <summary>
/// Token selection on the device, one group per row of F32 logits [rows, vocab], in Hugging Face's order: repetition
/// penalty (over prompt and generated tokens: positive logits divided, negative multiplied), presence and frequency
/// penalties (OpenAI's: over generated tokens), logit bias, then greedy argmax (lowest id on ties) or temperature,
/// top-k (every logit ≥ the k-th largest kept), top-p (the smallest set, in descending order, whose mass reaches p:
/// a token is kept when the mass strictly above it is below p), min-p (probability ≥ min_p × the largest) and a draw
/// from what remains by inverse CDF in id order with a counter-based generator (seed, step): reproducible and
/// independent of the batch. Thresholds are found by bisection over the order-preserving integer image of the
/// floats, so the kept sets are exact, not approximate. Group sums run as fixed trees: bit-reproducible.
/// Writes the id, its log-probability under the unprocessed logits, and counts it in the penalty state.
/// </summary>
internal static class SamplingKernels
{
    /// <summary>Shared memory per group: a float and an int per thread, plus one int.</summary>
    public static int SharedInts(int groupSize) => (2 * groupSize) + 2;

    public static void Sample(ArrayView<float> logits, ArrayView<float> work, ArrayView<SamplingRow> parameters, ArrayView<int> history, ArrayView<int> generated,
        ArrayView<int> biasIds, ArrayView<float> biasValues, ArrayView<int> chosen, ArrayView<float> logProbs, int rows, int vocab)
    {
        int tid = Group.IdxX, g = Group.DimX;
        ArrayView<int> shared = SharedMemory.GetDynamic<int>();
        ArrayView<float> redF = shared.SubView(0, g).Cast<float>();
        ArrayView<int> redI = shared.SubView(g, g), pick = shared.SubView(2 * g, 2);
        for (int r = Grid.IdxX; r < rows; r += Grid.DimX)
        {
            SamplingRow p = parameters[r];
            long row = (long)r * vocab, state = (long)p.Slot * vocab;

            // Log-sum-exp of the raw logits (for the chosen token's log-probability).
            float m = float.NegativeInfinity;
            for (int v = tid; v < vocab; v += g)
            {
                m = Max(m, logits[row + v]);
            }

            float rawMax = ReduceMax(redF, m);
            float s = 0f;
            for (int v = tid; v < vocab; v += g)
            {
                s += MathF.Exp(logits[row + v] - rawMax);
            }

            float rawLse = rawMax + MathF.Log(ReduceSum(redF, s));

            // Penalties, then the logit bias, into the work row.
            for (int v = tid; v < vocab; v += g)
            {
                float x = logits[row + v];
                if (p.Slot >= 0)
                {
                    int seen = history[state + v], times = generated[state + v];
                    if (seen > 0 && p.Repetition != 1f)
                    {
                        x = x > 0f ? x / p.Repetition : x * p.Repetition;
                    }

                    x -= (times > 0 ? p.Presence : 0f) + (p.Frequency * times);
                }

                work[row + v] = float.IsNaN(x) ? float.NegativeInfinity : x;
            }

            Group.Barrier();
            for (int b = tid; b < p.BiasCount; b += g)
            {
                int id = biasIds[p.BiasStart + b];
                work[row + id] += biasValues[p.BiasStart + b];
            }

            Group.Barrier();
            int token;
            if (p.Temperature <= 0f)
            {
                token = ArgMax(work, row, vocab, redF, redI, tid, g);
            }
            else
            {
                token = Draw(work, row, vocab, p, redF, redI, pick, tid, g);
            }

            if (tid == 0)
            {
                chosen[r] = token;
                logProbs[r] = logits[row + token] - rawLse;
                if (p.Slot >= 0)
                {
                    history[state + token] += 1;
                    generated[state + token] += 1;
                }
            }

            Group.Barrier();
        }
    }

    private static int Draw(ArrayView<float> work, long row, int vocab, SamplingRow p, ArrayView<float> redF, ArrayView<int> redI, ArrayView<int> pick, int tid, int g)
    {
        for (int v = tid; v < vocab; v += g)
        {
            work[row + v] /= p.Temperature;
        }

        Group.Barrier();
        if (p.TopK > 0 && p.TopK < vocab)
        {
            // The k-th largest key T: the largest T with count(key ≥ T) ≥ k.
            long lo = KeyBound(work, row, vocab, redI, tid, g, max: false), hi = KeyBound(work, row, vocab, redI, tid, g, max: true);
            while (lo < hi)
            {
                long mid = lo + ((hi - lo + 1) / 2);
                if (CountAtLeast(work, row, vocab, (int)mid, redI, tid, g) >= p.TopK)
                {
                    lo = mid;
                }
                else
                {
                    hi = mid - 1;
                }
            }

            MaskBelow(work, row, vocab, (int)lo, tid, g);
        }

        float m = float.NegativeInfinity;
        for (int v = tid; v < vocab; v += g)
        {
            m = Max(m, work[row + v]);
        }

        float max = ReduceMax(redF, m);
        if (p.TopP < 1f)
        {
            float total = 0f;
            for (int v = tid; v < vocab; v += g)
            {
                total += MathF.Exp(work[row + v] - max);
            }

            float bound = p.TopP * ReduceSum(redF, total);

            // The smallest key t whose strictly-greater mass is below p: keep every key ≥ t.
            long lo = KeyBound(work, row, vocab, redI, tid, g, max: false) - 1, hi = Key(max);
            while (hi - lo > 1)
            {
                long mid = lo + ((hi - lo) / 2);
                float above = 0f;
                for (int v = tid; v < vocab; v += g)
                {
                    float x = work[row + v];
                    above += Key(x) > mid ? MathF.Exp(x - max) : 0f;
                }

                if (ReduceSum(redF, above) < bound)
                {
                    hi = mid;
                }
                else
                {
                    lo = mid;
                }
            }

            MaskBelow(work, row, vocab, (int)hi, tid, g);
        }

        if (p.MinP > 0f)
        {
            for (int v = tid; v < vocab; v += g)
            {
                if (MathF.Exp(work[row + v] - max) < p.MinP)
                {
                    work[row + v] = float.NegativeInfinity;
                }
            }

            Group.Barrier();
        }

        // Inverse CDF in id order: each thread sums a contiguous chunk; thread 0 walks the chunks, then the chunk.
        int chunk = (vocab + g - 1) / g, start = tid * chunk, end = start + chunk < vocab ? start + chunk : vocab;
        float partial = 0f;
        for (int v = start; v < end; v++)
        {
            partial += MathF.Exp(work[row + v] - max);
        }

        redF[tid] = partial;
        Group.Barrier();
        if (tid == 0)
        {
            float sum = 0f;
            for (int t = 0; t < g; t++)
            {
                sum += redF[t];
            }

            float target = Uniform(p.Seed, p.Step) * sum, running = 0f;
            int token = -1, lastKept = -1;
            for (int t = 0; t < g && token < 0; t++)
            {
                if (running + redF[t] <= target)
                {
                    running += redF[t];
                    int e = t * chunk + chunk < vocab ? (t * chunk) + chunk : vocab;
                    for (int v = t * chunk; v < e; v++)
                    {
                        lastKept = work[row + v] != float.NegativeInfinity ? v : lastKept;
                    }

                    continue;
                }

                int stop = (t * chunk) + chunk < vocab ? (t * chunk) + chunk : vocab;
                for (int v = t * chunk; v < stop && token < 0; v++)
                {
                    float e = MathF.Exp(work[row + v] - max);
                    lastKept = e > 0f ? v : lastKept;
                    running += e;
                    token = running > target && e > 0f ? v : -1;
                }
            }

            pick[0] = token >= 0 ? token : lastKept;
        }

        Group.Barrier();
        int chosen = pick[0];
        Group.Barrier();
        return chosen;
    }

    private static int ArgMax(ArrayView<float> work, long row, int vocab, ArrayView<float> redF, ArrayView<int> redI, int tid, int g)
    {
        float best = float.NegativeInfinity;
        int index = int.MaxValue;
        for (int v = tid; v < vocab; v += g)
        {
            float x = work[row + v];
            if (x > best || (index == int.MaxValue && x == best))
            {
                best = x;
                index = v;
            }
        }

        redF[tid] = best;
        redI[tid] = index;
        Group.Barrier();
        for (int half = g / 2; half > 0; half /= 2)
        {
            if (tid < half)
            {
                float a = redF[tid], b = redF[tid + half];
                int ia = redI[tid], ib = redI[tid + half];
                if (b > a || (b == a && ib < ia))
                {
                    redF[tid] = b;
                    redI[tid] = ib;
                }
            }

            Group.Barrier();
        }

        int result = redI[0];
        Group.Barrier();
        return result == int.MaxValue ? 0 : result;
    }

    // Floats ordered as signed integers: x < y ⇔ Key(x) < Key(y) (−0 just below +0).
    private static int Key(float x)
    {
        int bits = (int)Interop.FloatAsInt(x);
        return bits >= 0 ? bits : bits ^ 0x7FFFFFFF;
    }

    private static long KeyBound(ArrayView<float> work, long row, int vocab, ArrayView<int> redI, int tid, int g, bool max)
    {
        int bound = max ? int.MinValue : int.MaxValue;
        for (int v = tid; v < vocab; v += g)
        {
            int k = Key(work[row + v]);
            bound = max ? (k > bound ? k : bound) : (k < bound ? k : bound);
        }

        return ReduceInt(redI, bound, max ? IntMax : IntMin);
    }

    private static int CountAtLeast(ArrayView<float> work, long row, int vocab, int key, ArrayView<int> redI, int tid, int g)
    {
        int count = 0;
        for (int v = tid; v < vocab; v += g)
        {
            count += Key(work[row + v]) >= key ? 1 : 0;
        }

        return ReduceInt(redI, count, IntSum);
    }

    private const int IntSum = 0, IntMax = 1, IntMin = 2;

    // A group tree over ints (fixed order): the sum, max or min of every thread's value, returned to all threads.
    private static int ReduceInt(ArrayView<int> red, int value, int op)
    {
        int tid = Group.IdxX;
        red[tid] = value;
        Group.Barrier();
        for (int half = Group.DimX / 2; half > 0; half /= 2)
        {
            if (tid < half)
            {
                int a = red[tid], b = red[tid + half];
                red[tid] = op == IntSum ? a + b : op == IntMax ? (b > a ? b : a) : (b < a ? b : a);
            }

            Group.Barrier();
        }

        int result = red[0];
        Group.Barrier();
        return result;
    }

    private static void MaskBelow(ArrayView<float> work, long row, int vocab, int key, int tid, int g)
    {
        for (int v = tid; v < vocab; v += g)
        {
            if (Key(work[row + v]) < key)
            {
                work[row + v] = float.NegativeInfinity;
            }
        }

        Group.Barrier();
    }

    private static float ReduceSum(ArrayView<float> red, float value) => ReduceFloat(red, value, max: false);

    private static float ReduceMax(ArrayView<float> red, float value) => ReduceFloat(red, value, max: true);

    // A group tree over floats (fixed order, so bit-reproducible): the sum or the max, returned to all threads.
    private static float ReduceFloat(ArrayView<float> red, float value, bool max)
    {
        int tid = Group.IdxX;
        red[tid] = value;
        Group.Barrier();
        for (int half = Group.DimX / 2; half > 0; half /= 2)
        {
            if (tid < half)
            {
                red[tid] = max ? Max(red[tid], red[tid + half]) : red[tid] + red[tid + half];
            }

            Group.Barrier();
        }

        float result = red[0];
        Group.Barrier();
        return result;
    }

    private static float Max(float a, float b) => b > a ? b : a;

    /// <summary>A uniform float in [0, 1) from (seed, step): SplitMix64 of the pair, top 24 bits.</summary>
    internal static float Uniform(ulong seed, int step)
    {
        ulong z = seed + (((ulong)(uint)step + 1UL) * 0x9E3779B97F4A7C15UL);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        z ^= z >> 31;
        return (z >> 40) * (1f / 16777216f);
    }
}
