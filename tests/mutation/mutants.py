# Mutants for the mutation pass: (id, file, original text, mutated text, test project, xunit class filter).
# Every occurrence of the original in its file is mutated. Kinds: a rounding, an index, a scale, a comparison, a sign.
CORE = "tests/QLoRA.Core.Tests"
RT = "tests/QLoRA.Runtime.Tests"
Q = "src/QLoRA.Core/Quantization/"
K = "src/QLoRA.Runtime/Kernels/"
C = "src/QLoRA.Runtime/Cpu/"
E = "src/QLoRA.Runtime/Engine/"
T = "src/QLoRA.Runtime/Training/"
MUTANTS = [
    ("core-nf4-tie", Q + "FourBitCodes.cs", "int code = Bit(scaled > Unsafe.Add(ref t, 7)) << 3;", "int code = Bit(scaled >= Unsafe.Add(ref t, 7)) << 3;", CORE, "*"),
    ("core-nf4-step", Q + "FourBitCodes.cs", "code |= Bit(scaled > Unsafe.Add(ref t, code + 1)) << 1;", "code |= Bit(scaled > Unsafe.Add(ref t, code + 2)) << 1;", CORE, "*"),
    ("core-scalar-pair-index", Q + "FourBitKernels.cs", "dst[j] = (byte)((FourBitCodes.QuantizeNf4(src[2 * j] * scale) << 4) | FourBitCodes.QuantizeNf4(src[(2 * j) + 1] * scale));", "dst[j] = (byte)((FourBitCodes.QuantizeNf4(src[2 * j] * scale) << 4) | FourBitCodes.QuantizeNf4(src[2 * j] * scale));", CORE, "*"),
    ("core-odd-tail-pad", Q + "FourBitKernels.cs", "dst[pairs] = (byte)((high << 4) | FourBitCodes.ZeroCode(type));", "dst[pairs] = (byte)(high << 4);", CORE, "*"),
    ("core-zero-block-code", Q + "FourBitKernels.cs", "new Span<byte>(dst, (count + 1) / 2).Fill((byte)((zero << 4) | zero));", "new Span<byte>(dst, (count + 1) / 2).Fill((byte)(zero << 4));", CORE, "*"),
    ("core-dequant-nibble", Q + "FourBitKernels.cs", "dst[2 * j] = table[b >> 4] * absmax;", "dst[2 * j] = table[b & 15] * absmax;", CORE, "*"),
    ("core-dequant-scale", Q + "FourBitKernels.cs", "dst[(2 * j) + 1] = table[b & 15] * absmax;", "dst[(2 * j) + 1] = table[b & 15] * absmax * 1.0000001f;", CORE, "*"),
    ("core-avx2-nf4-step1", Q + "FourBitKernels.cs", "code -= Vector256.GreaterThan(v, Avx2.PermuteVar8x32(Nf4Step1, code >>> 1)).AsInt32();", "code -= Vector256.GreaterThanOrEqual(v, Avx2.PermuteVar8x32(Nf4Step1, code >>> 1)).AsInt32();", CORE, "*"),
    ("core-avx2-dequant-shift", Q + "FourBitKernels.cs", "Vector256<float> high = Lookup16(tableLow, tableHigh, bytes >>> 4) * scale;", "Vector256<float> high = Lookup16(tableLow, tableHigh, bytes >>> 3) * scale;", CORE, "*"),
    ("core-reciprocal", Q + "BlockwiseQuantizer.cs", "FourBitKernels.Quantize(values, length, 1f / max, codes, type);", "FourBitKernels.Quantize(values, length, 1.0000001f / max, codes, type);", CORE, "*"),
    ("core-dq-mean", Q + "DoubleQuantization.cs", "float offset = (float)(sum / absmax.Length);", "float offset = (float)(sum / (absmax.Length + 1));", CORE, "*"),
    ("core-dq-reciprocal", Q + "DoubleQuantization.cs", "searcher.Quantize(source + start, length, offset, 1f / max, codes + start);", "searcher.Quantize(source + start, length, offset, 0.999f / max, codes + start);", CORE, "*"),
    ("rt-dequant-block-index", K + "DequantizeKernels.cs", "float scale = absmax.Get(first / blockSize);", "float scale = absmax.Get(first / blockSize / 2);", RT, "*DequantizeKernelTestsOn*"),
    ("rt-dequant-pair-nibble", K + "DequantizeKernels.cs", "ToBf16(table[(int)(b >> 4)] * scale) | (ToBf16(table[(int)(b & 15)] * scale) << 16);", "ToBf16(table[(int)(b & 15)] * scale) | (ToBf16(table[(int)(b >> 4)] * scale) << 16);", RT, "*DequantizeKernelTestsOn*"),
    ("rt-dequant-f32-order", K + "DequantizeKernels.cs", "result.W = Interop.FloatAsInt(table[(int)((twoBytes >> 8) & 15)] * scale);", "result.W = Interop.FloatAsInt(table[(int)((twoBytes >> 12) & 15)] * scale);", RT, "*DequantizeKernelTestsOn*"),
    ("rt-nested-offset", K + "AbsmaxSources.cs", "return scaled + _offset;", "return scaled;", RT, "*DequantizeKernelTestsOn*"),
    ("rt-gemv-absmax", K + "Nf4GemvKernels.cs", "float scale = absmax.Get(chunk * 32 / s.BlockSize);", "float scale = absmax.Get((chunk + 1) * 32 / s.BlockSize);", RT, "*GemvTestsOn*"),
    ("rt-gemv-reduce", K + "Nf4GemvKernels.cs", "for (int offset = lanes / 2; offset > 0; offset /= 2)", "for (int offset = lanes / 4; offset > 0; offset /= 2)", RT, "*GemvTestsOn*"),
    ("rt-attn-causal", K + "AttentionKernels.cs", "if (j >= first && j <= t)", "if (j >= first && j < t)", RT, "*AttentionTestsOn*"),
    ("rt-attn-window", K + "AttentionKernels.cs", "if (j < first || j > t)", "if (j < first - 1 || j > t)", RT, "*AttentionTestsOn*"),
    ("rt-rmsnorm-eps", K + "RmsNormKernels.cs", "float inv = 1f / MathF.Sqrt((WarpReduce.Sum(sum) / dim) + eps);", "float inv = 1f / (MathF.Sqrt(WarpReduce.Sum(sum) / dim) + eps);", RT, "*OpsTestsOn*"),
    ("rt-rope-sign", K + "RopeKernels.cs", "x[first] = e.Store((a * c) - (b * s));", "x[first] = e.Store((a * c) + (b * s));", RT, "*RopeAndElementwiseTestsOn*"),
    ("core-avx2-fused-reciprocal", Q + "FourBitKernels.Avx2Fused.cs", "Vector256<float> scale = Vector256.Create(1f / BitConverter.UInt32BitsToSingle(maxBits));", "Vector256<float> scale = Vector256.Create(1.0000001f / BitConverter.UInt32BitsToSingle(maxBits));", CORE, "*"),
    ("cpu-gemm-pack-a-index", C + "CpuGemm.cs", "dst[(p * MR) + r] = src[p];", "dst[(p * MR) + r] = src[Math.Max(0, p - 1)];", RT, "*CpuGemmTests"),
    ("cpu-gemm-beta", C + "CpuGemm.cs", "dst[j] = beta == 0f ? alpha * sums[j] : (alpha * sums[j]) + (beta * dst[j]);", "dst[j] = beta == 0f ? alpha * sums[j] : (alpha * sums[j]) + dst[j];", RT, "*CpuGemmTests"),
    ("cpu-gemm-pack-bt-index", C + "IPanelSource.cs", "dst[((long)p * nr) + j] = j < width ? src[p] : 0f;", "dst[((long)p * nr) + j] = j < width ? src[Math.Max(0, p - 1)] : 0f;", RT, "*CpuGemmTests"),
    ("cpu-fourbit-nibble", C + "FourBitPanelSource.cs", "int code = (packed[e >> 1] >> ((~(int)e & 1) << 2)) & 15;", "int code = (packed[e >> 1] >> (((int)e & 1) << 2)) & 15;", RT, "*CpuGemmTests"),
    ("cpu-attn-window", C + "CpuAttention.cs", "private static int First(int i, int window) => window > 0 ? Math.Max(0, i - window + 1) : 0;", "private static int First(int i, int window) => window > 0 ? Math.Max(0, i - window) : 0;", RT, "*AttentionTestsOnCpu"),
    ("cpu-attn-dv", C + "CpuAttention.cs", "TensorPrimitives.MultiplyAdd(gradOut, p, dValues.AsSpan(j * d, d), dValues.AsSpan(j * d, d));", "TensorPrimitives.MultiplyAdd(gradOut, ds, dValues.AsSpan(j * d, d), dValues.AsSpan(j * d, d));", RT, "*AttentionTestsOnCpu"),
    ("cpu-rmsnorm-eps", C + "CpuRowOps.cs", "float scale = 1f / MathF.Sqrt((sum / dim) + eps);", "float scale = 1f / (MathF.Sqrt(sum / dim) + eps);", RT, "*OpsTestsOnCpu"),
    ("cpu-rope-sign", C + "CpuRowOps.cs", "head[i] = (a * cos[i]) - (b * sin[i]);", "head[i] = (a * cos[i]) + (b * sin[i]);", RT, "*RopeAndElementwiseTestsOnCpu"),
    ("cpu-swiglu-backward", C + "CpuRowOps.cs", "g[i] = d[i] * u[i] * sigmoid * (1f + (g[i] * (1f - sigmoid)));", "g[i] = d[i] * u[i] * sigmoid * (1f + (g[i] * sigmoid));", RT, "*OpsTestsOnCpu"),
    ("cpu-gemm-rows-stride", C + "GemmMicroKernels.cs", "public float At(int r, int p) => a[(r * lda) + p];", "public float At(int r, int p) => a[(r * (lda - 1)) + p];", RT, "*CpuGemmTests"),
    ("cpu-gemm-pack-at-index", C + "CpuGemm.cs", "dst[(p * MR) + r] = src[r];", "dst[(p * MR) + r] = src[MR - 1 - r];", RT, "*CpuGemmTests"),
    ("cpu-gemv-nibble-order", C + "CpuGemv.cs", "pairs[2 * b] = table[b >> 4];", "pairs[2 * b] = table[b & 15];", RT, "*CpuGemmTests"),
    ("cpu-gemv-block-scale", C + "CpuGemv.cs", "float scale = absmax[block];", "float scale = absmax[Math.Max(0, block - 1)];", RT, "*GemvTestsOnCpu"),
    ("cpu-dropout-keep", C + "CpuRowOps.cs", "scratch[i] = DropoutKernels.Hash(seed, start + i) >= threshold ? scratch[i] * scale : 0f;", "scratch[i] = DropoutKernels.Hash(seed, start + i) >= threshold ? scratch[i] : 0f;", RT, "*DropoutTestsOnCpu"),
    ("cpu-ce-one-hot", C + "CpuRowOps.cs", "row[j] = (MathF.Exp(row[j] - logSumExp) - (j == label[r] ? 1f : 0f)) * gradScale;", "row[j] = (MathF.Exp(row[j] - logSumExp) - (j == label[r] ? 0.999f : 0f)) * gradScale;", RT, "*CrossEntropyTestsOnCpu"),
    ("cpu-embedding-scatter", C + "CpuOps.cs", "for (int k = segmentStarts[segment]; k < segmentStarts[segment + 1]; k++)", "for (int k = segmentStarts[segment] + 1; k < segmentStarts[segment + 1]; k++)", RT, "*RopeAndElementwiseTestsOnCpu"),
    ("cpu-gemv-simd-nibble", C + "CpuGemv.cs", "Vector256<float> even = Lookup16(low, high, codes >>> 4);", "Vector256<float> even = Lookup16(low, high, codes >>> 3);", RT, "*CpuGemmTests"),
    ("engine-norm1-residual", E + "DecoderBlock.cs", "        w.InputNorm.Backward(x, dh, R(a.InverseRms, t), dxPart, dNorm);\n        Elementwise.Add(dResidual, dxPart, dResidual);", "        w.InputNorm.Backward(x, dh, R(a.InverseRms, t), dxPart, dNorm);", RT, "*TrainingEngineTestsOnCpu"),
    ("engine-kv-grad", E + "DecoderBlock.cs", "        w.V.Backward(normed, R(g.DV, t), dhPart, b.Training);\n        Elementwise.Add(dh, dhPart, dh);", "        w.V.Backward(normed, R(g.DV, t), dhPart, b.Training);", RT, "*TrainingEngineTestsOnCpu"),
    ("engine-rope-backward", E + "DecoderBlock.cs", "        Rope.Backward(dk3, b.Positions, b.InverseFrequencies);", "", RT, "*TrainingEngineTestsOnCpu"),
    ("engine-checkpoint-seed", E + "TrainingEngine.cs", "            if (Options.GradientCheckpointing)\n            {", "            if (Options.GradientCheckpointing)\n            {\n                SetDropoutSeeds(dropoutSeed + 1);", RT, "*TrainingEngineTestsOnCpu"),
    ("engine-positions-restart", E + "PackedBatch.cs", "positions[t] = t - Boundaries[s];", "positions[t] = t;", RT, "*PackedBatchTests"),
    ("engine-paged-tail", T + "PagedAdamWOptimizer.cs", "int n = Math.Min(_page, count - start);", "int n = Math.Min(_page, Math.Max(1, count - start - 1));", RT, "*TrainingEngineTestsOnCpu"),
]
