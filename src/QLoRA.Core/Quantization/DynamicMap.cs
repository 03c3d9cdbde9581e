using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace QLoRA.Core.Quantization;

/// <summary>
/// The signed 8-bit dynamic quantization map of bitsandbytes (<c>create_dynamic_map(signed=True)</c>) and its
/// 8-bit quantizer, used by double quantization to store the absmax constants in one byte each.
/// </summary>
/// <remarks>
/// The map: for i in 0..6, the 2^i midpoints of <c>linspace(0.1, 1, 2^i + 1)</c> scaled by 10^(i−6), with both
/// signs, plus 0 and 1.0, sorted — 256 float32 values from −0.99296875 to 1.0 (computed in float32 as PyTorch
/// does). Files carry the map they were written with (<c>nested_quant_map</c>); readers use the file's map.
/// </remarks>
public static class DynamicMap
{
    private static readonly float[] SignedMap = BuildSigned();
    private static readonly float[] UnsignedMap = BuildUnsigned();

    /// <summary>The 256 ascending values of the signed dynamic map.</summary>
    public static ReadOnlySpan<float> Signed => SignedMap;

    /// <summary>
    /// The 256 ascending values of the unsigned dynamic map (<c>create_dynamic_map(signed=False)</c>): for i in 0..6 the
    /// 2^(i+1) midpoints of <c>linspace(0.1, 1, 2^(i+1) + 1)</c> scaled by 10^(i−6), plus 0 and 1.0 — bitsandbytes'
    /// map for the second moment of its 8-bit optimizers.
    /// </summary>
    public static ReadOnlySpan<float> Unsigned => UnsignedMap;

    /// <summary>The index of 0.0 in the signed map (127): the code of an all-equal nested block.</summary>
    public static byte SignedZeroCode { get; } = (byte)Array.IndexOf(SignedMap, 0f);

    /// <summary>
    /// The 8-bit code of <paramref name="x"/> (already scaled by 1/absmax) in an ascending 256-entry
    /// <paramref name="code"/>, bit-identical to bitsandbytes' CUDA <c>dQuantize</c>.
    /// </summary>
    /// <remarks>
    /// bitsandbytes walks a 7-step binary search to an even leaf p (its neighbours p±1 are the last pivots it
    /// turned at) and then compares with the float32 midpoints <c>(code[j] + code[j+1]) * 0.5f</c>; a tie goes to
    /// the even index. That is: the code is the number of midpoints below x, plus one when x equals a midpoint
    /// with an odd index — a branch-free search over the 255 midpoints.
    /// </remarks>
    /// <exception cref="ArgumentException"><paramref name="code"/> does not have 256 ascending entries.</exception>
    public static byte Quantize(ReadOnlySpan<float> code, float x)
    {
        if (code.Length != 256)
        {
            throw new ArgumentException("An 8-bit code map has 256 entries.", nameof(code));
        }

        return new Searcher(code).Quantize(x);
    }

    /// <summary>The signed map's searcher, built once.</summary>
    internal static Searcher SignedSearcher { get; } = new(SignedMap);

    /// <summary>
    /// Midpoints of an ascending 256-entry map, padded with +∞, as order-preserving integer keys (so a float compare
    /// becomes an integer compare), for branch-free scalar and AVX-512 gather searches.
    /// </summary>
    internal sealed unsafe class Searcher
    {
        private readonly int[] _keys = GC.AllocateArray<int>(256, pinned: true);
        private readonly Vector256<int>[] _levels = new Vector256<int>[4];

        public Searcher(ReadOnlySpan<float> code)
        {
            for (int j = 0; j < 255; j++)
            {
                if (!(code[j + 1] > code[j]))
                {
                    throw new ArgumentException($"The code map must be strictly ascending (entries {j} and {j + 1}).", nameof(code));
                }

                float midpoint = (code[j] + code[j + 1]) * 0.5f;
                if (midpoint == 0f)
                {
                    throw new ArgumentException("A midpoint of the code map is zero; ±0 would compare unequal as keys.", nameof(code));
                }

                _keys[j] = Key(midpoint);
            }

            _keys[255] = Key(float.PositiveInfinity);
            Span<int> table = stackalloc int[8];
            for (int level = 0; level < 4; level++)
            {
                // Level L (step s = 128 >> L) probes keys[k·2s + s − 1] for k < 2^L: at most 8 entries.
                int step = 128 >> level;
                for (int k = 0; k < 8; k++)
                {
                    table[k] = _keys[(Math.Min(k, (1 << level) - 1) * 2 * step) + step - 1];
                }

                _levels[level] = Vector256.Create<int>(table);
            }
        }

        // Finite floats (never NaN here) ordered as signed integers: flip the magnitude bits of negatives.
        private static int Key(float f)
        {
            int bits = BitConverter.SingleToInt32Bits(f);
            return bits ^ ((bits >> 31) & 0x7FFF_FFFF);
        }

        public byte Quantize(float x)
        {
            int key = Key(x);
            ref int keys = ref System.Runtime.InteropServices.MemoryMarshal.GetArrayDataReference(_keys);
            int position = 0;
            for (int step = 128; step > 0; step >>= 1)
            {
                position += (int)(((long)System.Runtime.CompilerServices.Unsafe.Add(ref keys, position + step - 1) - key) >> 63) & step;
            }

            if ((position & 1) == 1 && System.Runtime.CompilerServices.Unsafe.Add(ref keys, position) == key)
            {
                position++;
            }

            return (byte)position;
        }

        /// <summary>Codes of <c>(source[i] − offset) × scale</c> for <paramref name="count"/> values.</summary>
        [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
        public void Quantize(float* source, int count, float offset, float scale, byte* codes)
        {
            int i = 0;
            if (Avx2.IsSupported && FourBitKernels.VectorWidth >= 256)
            {
                fixed (int* keys = _keys)
                {
                    for (; i <= count - 8; i += 8)
                    {
                        Vector256<float> x = (Vector256.Load(source + i) - Vector256.Create(offset)) * Vector256.Create(scale);
                        Vector256<int> code = Search8(keys, x);
                        Vector128<short> words = Sse2.PackSignedSaturate(code.GetLower(), code.GetUpper());
                        *(ulong*)(codes + i) = Sse2.PackUnsignedSaturate(words, words).AsUInt64().ToScalar();
                    }
                }
            }

            for (; i < count; i++)
            {
                codes[i] = Quantize((source[i] - offset) * scale);
            }
        }

        // Eight searches at once. The first four levels of the search tree have at most 8 distinct probes, taken
        // from per-level tables by permute; the last four gather. The last probe not below x is the only midpoint
        // x can tie with, so ties need no extra load.
        [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveInlining)]
        private Vector256<int> Search8(int* keys, Vector256<float> x)
        {
            Vector256<int> bits = x.AsInt32();
            Vector256<int> key = bits ^ ((bits >> 31) & Vector256.Create(0x7FFF_FFFF));
            Vector256<int> position = Vector256<int>.Zero;
            Vector256<int> lastNotBelow = Vector256.Create(keys[255]);
            for (int level = 0; level < 4; level++)
            {
                int step = 128 >> level;
                Vector256<int> probe = Avx2.PermuteVar8x32(_levels[level], position >>> (8 - level));
                Vector256<int> below = Vector256.LessThan(probe, key);
                position += below & Vector256.Create(step);
                lastNotBelow = Vector256.ConditionalSelect(below, lastNotBelow, probe);
            }

            for (int step = 8; step > 0; step >>= 1)
            {
                Vector256<int> probe = Avx2.GatherVector256(keys, position + Vector256.Create(step - 1), 4);
                Vector256<int> below = Vector256.LessThan(probe, key);
                position += below & Vector256.Create(step);
                lastNotBelow = Vector256.ConditionalSelect(below, lastNotBelow, probe);
            }

            Vector256<int> tie = Vector256.Equals(lastNotBelow, key) & (position & Vector256<int>.One);
            return position + tie; // a tie at an odd midpoint index goes up to the even code
        }
    }

    private static float[] BuildSigned() => Build(signed: true);

    private static float[] BuildUnsigned() => Build(signed: false);

    private static float[] Build(bool signed)
    {
        var values = new List<float>(256);
        for (int i = 0; i < 7; i++)
        {
            int steps = (1 << (signed ? i : i + 1)) + 1;
            float[] boundaries = LinspaceFloat32(0.1f, 1f, steps);
            float scale = (float)Math.Pow(10, i - 6);
            for (int j = 0; j < steps - 1; j++)
            {
                float mean = (boundaries[j] + boundaries[j + 1]) / 2f;
                values.Add(scale * mean);
                if (signed)
                {
                    values.Add(-scale * mean);
                }
            }
        }

        values.Add(0f);
        values.Add(1f);
        values.Sort();
        return [.. values];
    }

    // torch.linspace in float32: the first half counts up from start, the second half down from end.
    private static float[] LinspaceFloat32(float start, float end, int steps)
    {
        var result = new float[steps];
        float step = (end - start) / (steps - 1);
        int halfway = steps / 2;
        for (int i = 0; i < steps; i++)
        {
            result[i] = i < halfway ? start + (step * i) : end - (step * (steps - i - 1));
        }

        return result;
    }
}
