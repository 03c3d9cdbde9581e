using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using BenchmarkDotNet.Attributes;
using QLoRA.Core.Numerics;
using QLoRA.Core.Quantization;

namespace QLoRA.Bench;

/// <summary>
/// NF4 quantize/dequantize throughput on a 64 MiB bf16 tensor (32 Mi values), next to a single parallel read pass over
/// the same bytes measured in the same run (the baseline). Throughput columns: GB/s of bf16 data and % of the read pass.
/// </summary>
[MemoryDiagnoser(displayGenColumns: false)]
public class QuantizationThroughput
{
    public const int Bytes = 64 << 20;
    private const int Count = Bytes / 2;
    private const int BlockSize = 64;

    private BFloat16[] _input = [];
    private byte[] _packed = [];
    private float[] _absmax = [];
    private BFloat16[] _output = [];
    private static readonly int Widest = FourBitKernels.DetectWidth();

    [GlobalSetup]
    public void Setup()
    {
        var rng = new Random(1);
        _input = new BFloat16[Count];
        for (int i = 0; i < Count; i++)
        {
            double u1 = 1.0 - rng.NextDouble();
            double u2 = rng.NextDouble();
            _input[i] = BFloat16.FromSingle((float)(0.02 * Math.Sqrt(-2 * Math.Log(u1)) * Math.Cos(2 * Math.PI * u2)));
        }

        _packed = new byte[Count / 2];
        _absmax = new float[Count / BlockSize];
        _output = new BFloat16[Count];
        BlockwiseQuantizer.Quantize(_input, _packed, _absmax, QuantType.Nf4, BlockSize);
    }

    /// <summary>Reads every byte once, split across cores like the quantizer: the bandwidth reference.</summary>
    [Benchmark(Baseline = true, Description = "read pass (64 MiB bf16)")]
    public ulong ReadPass()
    {
        ReadOnlySpan<byte> all = MemoryMarshal.AsBytes(_input.AsSpan());
        int chunks = Environment.ProcessorCount * 8;
        int chunk = all.Length / chunks;
        var sums = new ulong[chunks];
        BFloat16[] input = _input;
        Parallel.For(0, chunks, c =>
        {
            ReadOnlySpan<ulong> words = MemoryMarshal.Cast<BFloat16, ulong>(input.AsSpan((c * chunk) / 2, chunk / 2));
            Vector256<ulong> acc = Vector256<ulong>.Zero;
            int i = 0;
            for (; i <= words.Length - 4; i += 4)
            {
                acc += Vector256.Create(words.Slice(i, 4));
            }

            sums[c] = Vector256.Sum(acc);
        });
        return sums.Aggregate((a, b) => a ^ b);
    }

    [Benchmark(Description = "NF4 quantize + double quant")]
    public float QuantizeDoubleQuant()
    {
        FourBitKernels.VectorWidth = Widest;
        BlockwiseQuantizer.Quantize(_input, _packed, _absmax, QuantType.Nf4, BlockSize);
        return DoubleQuantization.Compress(_absmax).Offset;
    }

    [Benchmark(Description = "NF4 quantize")]
    public float Quantize()
    {
        FourBitKernels.VectorWidth = Widest;
        BlockwiseQuantizer.Quantize(_input, _packed, _absmax, QuantType.Nf4, BlockSize);
        return _absmax[0];
    }

    [Benchmark(Description = "NF4 dequantize to bf16")]
    public ushort Dequantize()
    {
        FourBitKernels.VectorWidth = Widest;
        BlockwiseDequantizer.Dequantize(_packed, _absmax, QuantType.Nf4, BlockSize, _output);
        return _output[0].Bits;
    }

    [Benchmark(Description = "NF4 quantize + DQ, scalar path")]
    public float QuantizeScalar()
    {
        FourBitKernels.VectorWidth = 0;
        BlockwiseQuantizer.Quantize(_input, _packed, _absmax, QuantType.Nf4, BlockSize);
        return DoubleQuantization.Compress(_absmax).Offset;
    }

    [Benchmark(Description = "NF4 dequantize to bf16, scalar path")]
    public ushort DequantizeScalar()
    {
        FourBitKernels.VectorWidth = 0;
        BlockwiseDequantizer.Dequantize(_packed, _absmax, QuantType.Nf4, BlockSize, _output);
        return _output[0].Bits;
    }
}
