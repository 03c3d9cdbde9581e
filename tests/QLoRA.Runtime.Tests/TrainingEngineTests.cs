using QLoRA.Core;
using QLoRA.Runtime.Devices;
using QLoRA.Runtime.Engine;
using QLoRA.Runtime.Layers;
using QLoRA.Runtime.Models;
using QLoRA.Runtime.Ops;
using QLoRA.Runtime.Training;

namespace QLoRA.Runtime.Tests;

/// <summary>
/// The training engine on the tiny Llama (NF4 base, f32 compute, LoRA on all seven projections): the loss and every
/// adapter gradient against central differences of the float64 model written in <see cref="TinyLlama"/>; gradient
/// checkpointing, packing and accumulation against the plain run; the optimizers against each other.
/// </summary>
public abstract class TrainingEngineTests<TDevice>(TDevice fixture) : IClassFixture<TDevice>
    where TDevice : DeviceFixture
{
    private const int Rank = 4;
    private const double Alpha = 8;

    private static readonly string[] Modules = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"];

    // Two sequences of different lengths, packed: the loss is the mean over all 14 targets, not a mean of means.
    private static readonly int[][] Sequences = [[3, 17, 42, 0, 9, 9, 31, 5, 11], [7, 2, 49, 11, 30, 8, 1]];

    /// <summary>Fresh adapters with random A and B (B ≠ 0, so every gradient is non-trivial), the same for a seed.</summary>
    private static Dictionary<string, TinyLlama.LoraRef> Attach(Device device, LlamaForCausalLM model, int seed, double dropout = 0)
    {
        var rng = new Random(seed);
        var refs = new Dictionary<string, TinyLlama.LoraRef>();
        foreach ((string name, QuantizedLinear layer) in EngineModel.Of(model).Projections())
        {
            float[] a = [.. Enumerable.Range(0, Rank * layer.InFeatures).Select(_ => (float)((rng.NextDouble() - 0.5) * 0.4))];
            float[] b = [.. Enumerable.Range(0, layer.OutFeatures * Rank).Select(_ => (float)((rng.NextDouble() - 0.5) * 0.4))];
            layer.Lora = new LoraSlot(device, a, b, Rank, layer.InFeatures, layer.OutFeatures, (float)(Alpha / Rank), dropout);
            refs[name] = new TinyLlama.LoraRef([.. a.Select(v => (double)v)], [.. b.Select(v => (double)v)], Rank, Alpha / Rank);
        }

        return refs;
    }

    private static (double Loss, float[] Gradients) Run(TrainingEngine engine, IReadOnlyList<PackedBatch> microBatches)
    {
        int targets = microBatches.Sum(b => b.TargetTokens);
        engine.BeginStep();
        foreach (PackedBatch batch in microBatches)
        {
            engine.Accumulate(batch, 1f / targets);
        }

        StepStatistics stats = engine.ReadStep(1f / targets);
        Assert.Equal(targets, stats.TargetTokens);
        Assert.True(stats.Finite);
        return (stats.Loss, engine.Parameters.Gradients.ToHost<float>());
    }

    [Theory]
    [InlineData(false, false)]
    [InlineData(true, false)]
    [InlineData(false, true)]
    public void LossAndEveryAdapterGradientMatchCentralDifferencesOfTheFloat64Model(bool checkpointing, bool denseBase)
    {
        (string folder, TinyLlama.Weights weights) = TinyLlama.WriteCheckpoint();
        // A dense base (plain LoRA on bf16 weights) runs the dense GEMMs instead of the 4-bit ones.
        weights = denseBase ? weights.AsLoadedDense() : weights;
        using LlamaForCausalLM model = LlamaForCausalLM.LoadModel(fixture.Device, folder, new QLoRA.Modeling.LoadOptions(KeepProjectionsDense: denseBase));
        Assert.Equal(denseBase, model.Layers[0].QProj.DenseWeight is not null);
        Dictionary<string, TinyLlama.LoraRef> lora = Attach(fixture.Device, model, seed: 5);
        PackedBatch batch = PackedBatch.ForNextToken(Sequences);
        using var engine = new TrainingEngine(fixture.Device, EngineModel.Of(model), new EngineOptions(MaxTokens: 32, GradientCheckpointing: checkpointing));
        (double loss, float[] gradients) = Run(engine, [batch]);

        double Reference() => TinyLlama.Loss(weights, batch.Ids, batch.Labels, batch.Boundaries, lora);
        double expected = Reference();
        // float32 sums over a two-layer model: relative error a few hundred unit roundoffs at most.
        Assert.True(Math.Abs(loss - expected) <= 1e-5 * Math.Abs(expected), $"loss {loss} vs float64 {expected}");

        // Central differences in float64 (h = 1e-4: truncation ~h²·L''' ≈ 1e-8, far below the float32 gradients' error).
        const double h = 1e-4;
        var rng = new Random(11);
        double worst = 0;
        foreach (LoraParameters.Entry entry in engine.Parameters.Entries)
        {
            TinyLlama.LoraRef adapter = lora[entry.Module];
            foreach ((double[] values, LoraParameters.Span span) in new[] { (adapter.A, entry.A), (adapter.B, entry.B) })
            {
                for (int sample = 0; sample < 2; sample++)
                {
                    int i = rng.Next(values.Length);
                    double saved = values[i];
                    values[i] = saved + h;
                    double plus = Reference();
                    values[i] = saved - h;
                    double minus = Reference();
                    values[i] = saved;
                    double numeric = (plus - minus) / (2 * h);
                    double analytic = gradients[span.Offset + i];
                    // float32 backward through the model: error ≤ ~1e-4 relative, plus an absolute floor from the loss's scale.
                    double error = Math.Abs(analytic - numeric);
                    Assert.True(error <= (2e-4 * Math.Abs(numeric)) + 2e-6, $"{entry.Module} {(values == adapter.A ? "A" : "B")}[{i}]: engine {analytic} vs central difference {numeric}");
                    worst = Math.Max(worst, Math.Abs(numeric));
                }
            }
        }

        Assert.True(worst > 1e-3, "the sampled gradients must not all be negligible");
    }

    // PEFT's modules_to_save: the embeddings, every norm and lm_head trained whole next to the adapters.
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void ModulesToSaveGradientsMatchCentralDifferencesOfTheFloat64Model(bool checkpointing)
    {
        (string folder, TinyLlama.Weights weights) = TinyLlama.WriteCheckpoint();
        using LlamaForCausalLM model = LlamaForCausalLM.LoadModel(fixture.Device, folder);
        Dictionary<string, TinyLlama.LoraRef> lora = Attach(fixture.Device, model, seed: 5);
        PackedBatch batch = PackedBatch.ForNextToken(Sequences);
        using var engine = new TrainingEngine(fixture.Device, EngineModel.Of(model),
            new EngineOptions(MaxTokens: 32, GradientCheckpointing: checkpointing, ModulesToSave: ["embed_tokens", "norm", "lm_head"]));
        Assert.Equal(1 + (2 * TinyLlama.LayerCount) + 2, engine.Parameters.WholeModules.Count);
        // Two micro-batches accumulate: the whole modules' gradients must add up, not overwrite.
        PackedBatch first = PackedBatch.ForNextToken([Sequences[0]]), second = PackedBatch.ForNextToken([Sequences[1]]);
        (_, float[] gradients) = Run(engine, [first, second]);

        double Reference() => TinyLlama.Loss(weights, batch.Ids, batch.Labels, batch.Boundaries, lora);
        var rng = new Random(13);
        double worst = 0;
        foreach (LoraParameters.WholeEntry entry in engine.Parameters.WholeModules)
        {
            float[] values = weights.Dense[entry.Module + ".weight"];
            for (int sample = 0; sample < 3; sample++)
            {
                // Embedding rows of tokens the batch uses (the others' gradients are zero by construction).
                int i = entry.Module == "model.embed_tokens"
                    ? (Sequences[sample % 2][rng.Next(Sequences[sample % 2].Length)] * TinyLlama.Hidden) + rng.Next(TinyLlama.Hidden)
                    : rng.Next(values.Length);
                float saved = values[i];
                // The weights are float32: step by representable values and divide by the actual difference.
                float up = (float)(saved + 1e-3), down = (float)(saved - 1e-3);
                values[i] = up;
                double plus = Reference();
                values[i] = down;
                double minus = Reference();
                values[i] = saved;
                double numeric = (plus - minus) / ((double)up - down);
                double analytic = gradients[entry.Span.Offset + i];
                Assert.True(Math.Abs(analytic - numeric) <= (5e-4 * Math.Abs(numeric)) + 5e-6, $"{entry.Module}[{i}]: engine {analytic} vs central difference {numeric}");
                worst = Math.Max(worst, Math.Abs(numeric));
            }
        }

        Assert.True(worst > 1e-3, "the sampled gradients must not all be negligible");
    }

    [Fact]
    public void ModulesToSaveOfATiedTableOrOfNoModuleAreRefused()
    {
        (string folder, _) = TinyLlama.WriteCheckpoint(tied: true);
        using LlamaForCausalLM model = LlamaForCausalLM.LoadModel(fixture.Device, folder);
        EngineModel engineModel = EngineModel.Of(model);
        Assert.True(engineModel.TiedLmHead);
        var tied = Assert.Throws<NotSupportedException>(() => TrainingEngine.WholeModules(engineModel, ["lm_head"]));
        Assert.Contains("tie_word_embeddings", tied.Message);
        Assert.Throws<NotSupportedException>(() => TrainingEngine.WholeModules(engineModel, ["embed_tokens"]));
        var none = Assert.Throws<ArgumentException>(() => TrainingEngine.WholeModules(engineModel, ["final_layernorm"]));
        Assert.Contains("final_layernorm", none.Message);
        Assert.Equal(5, TrainingEngine.WholeModules(engineModel, ["norm"]).Count);
    }

    // bf16 (unit roundoff u = 2⁻⁹) and f16 (2⁻¹¹) activations, adapters rounded once per step: the loss stays within a
    // few u of the float32 run and the adapter gradients within ~10–20 u of it, relative to their RMS.
    [Theory]
    [InlineData(DType.BF16, 5e-3, 4e-2)]
    [InlineData(DType.F16, 1e-3, 1e-2)]
    public void NarrowComputeDtypesTrainCloseToFloat32(DType dtype, double lossTolerance, double gradientTolerance)
    {
        (string folder, _) = TinyLlama.WriteCheckpoint();
        PackedBatch batch = PackedBatch.ForNextToken(Sequences);
        var runs = new List<(double Loss, float[] Gradients)>();
        DType before = fixture.Device.ComputeDtype;
        foreach (DType compute in new[] { DType.F32, dtype })
        {
            fixture.Device.ComputeDtype = compute;
            try
            {
                using LlamaForCausalLM model = LlamaForCausalLM.LoadModel(fixture.Device, folder);
                Attach(fixture.Device, model, seed: 13);
                using var engine = new TrainingEngine(fixture.Device, EngineModel.Of(model), new EngineOptions(32));
                Assert.Equal(compute == DType.F32, engine.Parameters.Compute is null);
                runs.Add(Run(engine, [batch]));
            }
            finally
            {
                fixture.Device.ComputeDtype = before;
            }
        }

        double rms = Math.Sqrt(runs[0].Gradients.Average(g => (double)g * g));
        double error = Math.Sqrt(runs[0].Gradients.Zip(runs[1].Gradients).Average(p => (double)(p.First - p.Second) * (p.First - p.Second)));
        Assert.True(Math.Abs(runs[1].Loss - runs[0].Loss) <= lossTolerance * runs[0].Loss, $"{dtype} loss {runs[1].Loss} vs f32 {runs[0].Loss}; gradient error RMS {error / rms:E2} relative");
        Assert.True(error <= gradientTolerance * rms, $"{dtype} gradient error RMS {error} vs RMS {rms}");
        Assert.True(error >= 1e-6 * rms, "suspiciously exact: is the narrow dtype in use?");
    }

    [Fact]
    public void GradientCheckpointingGivesBitIdenticalGradientsWithLessActivationMemory()
    {
        (string folder, _) = TinyLlama.WriteCheckpoint();
        using LlamaForCausalLM model = LlamaForCausalLM.LoadModel(fixture.Device, folder);
        PackedBatch batch = PackedBatch.ForNextToken(Sequences);
        var results = new List<(double Loss, float[] Gradients, long Bytes)>();
        foreach (bool checkpointing in new[] { false, true })
        {
            Attach(fixture.Device, model, seed: 6, dropout: 0.1); // dropout too: the re-run forward must draw the same masks
            using var engine = new TrainingEngine(fixture.Device, EngineModel.Of(model), new EngineOptions(32, checkpointing));
            (double loss, float[] gradients) = Run(engine, [batch]);
            results.Add((loss, gradients, engine.Layout.Bytes));
            Assert.Equal(engine.Layout.Bytes, TrainingEngine.ActivationBytes(EngineModel.Of(model), engine.Options));
        }

        Assert.Equal(results[0].Loss, results[1].Loss);
        Assert.Equal(results[0].Gradients, results[1].Gradients);
        Assert.Contains(results[0].Gradients, g => g != 0);
        // One block's saved activations instead of one per block.
        Assert.True(results[1].Bytes < results[0].Bytes, $"{results[1].Bytes} vs {results[0].Bytes}");
        var layout = new ActivationArena.Layout();
        _ = new BlockActivations(layout, EngineShape.Of(model.Config, 32, DType.F32));
        Assert.Equal(results[0].Bytes - results[1].Bytes, (TinyLlama.LayerCount - 1) * layout.Bytes);
    }

    [Fact]
    public void PackingAndAccumulationGiveTheGradientsOfTheSequencesOneByOne()
    {
        (string folder, _) = TinyLlama.WriteCheckpoint();
        using LlamaForCausalLM model = LlamaForCausalLM.LoadModel(fixture.Device, folder);
        int[][] four = [.. Sequences, [4, 8, 15, 16, 23, 42], [1, 2, 3]];
        var runs = new List<(double Loss, float[] Gradients)>();
        foreach (IReadOnlyList<PackedBatch> microBatches in new[]
        {
            (IReadOnlyList<PackedBatch>)[PackedBatch.ForNextToken(four)],          // one packed batch of 4
            [.. four.Select(s => PackedBatch.ForNextToken([s]))],                  // 4 × 1, accumulated
            [PackedBatch.ForNextToken(four[..2]), PackedBatch.ForNextToken(four[2..])],
        })
        {
            Attach(fixture.Device, model, seed: 7);
            using var engine = new TrainingEngine(fixture.Device, EngineModel.Of(model), new EngineOptions(32));
            runs.Add(Run(engine, microBatches));
        }

        // Same normalization: the mean over all target tokens of the step, whatever the split.
        double scale = runs[0].Gradients.Max(Math.Abs);
        foreach ((double loss, float[] gradients) in runs.Skip(1))
        {
            Assert.True(Math.Abs(loss - runs[0].Loss) <= 1e-6 * runs[0].Loss, $"{loss} vs {runs[0].Loss}");
            for (int i = 0; i < gradients.Length; i++)
            {
                // Only the order of float32 sums over tokens differs.
                Assert.True(Math.Abs(gradients[i] - runs[0].Gradients[i]) <= 1e-5 * scale, $"gradient {i}: {gradients[i]} vs {runs[0].Gradients[i]}");
            }
        }
    }

    [Fact]
    public void PagedAdamWEndsWithExactlyTheParametersOfAdamW()
    {
        (string folder, _) = TinyLlama.WriteCheckpoint();
        using LlamaForCausalLM model = LlamaForCausalLM.LoadModel(fixture.Device, folder);
        PackedBatch batch = PackedBatch.ForNextToken(Sequences);
        var finals = new List<float[]>();
        foreach (bool paged in new[] { false, true })
        {
            Attach(fixture.Device, model, seed: 8);
            using var engine = new TrainingEngine(fixture.Device, EngineModel.Of(model), new EngineOptions(32));
            var options = new AdamWOptions(WeightDecay: 0.01);
            using AdapterOptimizer optimizer = paged
                ? new PagedAdamWOptimizer(fixture.Device, engine.Parameters.Count, options, pageElements: 1000) // many pages and a short last one
                : new AdamWOptimizer(fixture.Device, engine.Parameters.Count, options);
            if (optimizer is PagedAdamWOptimizer p)
            {
                Assert.Equal(4L * 1000 * sizeof(float), p.DeviceStateBytes);
                Assert.NotEqual(0, engine.Parameters.Count % 1000);
            }

            for (int step = 1; step <= 4; step++)
            {
                Run(engine, [batch]);
                optimizer.Step(engine.Parameters, step, 1e-2, 0.5f);
                engine.Parameters.RefreshCompute();
            }

            finals.Add(engine.Parameters.Values.ToHost<float>());
        }

        Assert.Equal(finals[0], finals[1]);
    }

    [Fact]
    public void LossFallsBelowATenthOfItsStartOnAMemorizationTask()
    {
        (string folder, _) = TinyLlama.WriteCheckpoint();
        using LlamaForCausalLM model = LlamaForCausalLM.LoadModel(fixture.Device, folder);
        Attach(fixture.Device, model, seed: 9);
        foreach (QuantizedLinear layer in EngineModel.Of(model).Projections().Select(p => p.Layer))
        {
            ILGPU.Runtime.ArrayViewExtensions.MemSetToZero(layer.Lora!.B.View<float>(), fixture.Device.Stream); // PEFT's start: B = 0
        }

        PackedBatch batch = PackedBatch.ForNextToken([[5, 12, 33, 7, 41, 2, 19, 28, 3, 46, 10, 37, 22, 8, 15, 30]]);
        using var engine = new TrainingEngine(fixture.Device, EngineModel.Of(model), new EngineOptions(32));
        using var optimizer = new AdamWOptimizer(fixture.Device, engine.Parameters.Count, new AdamWOptions());
        double first = 0, last = 0;
        for (int step = 1; step <= 40; step++)
        {
            (last, _) = Run(engine, [batch]);
            first = step == 1 ? last : first;
            optimizer.Step(engine.Parameters, step, 1e-2, 1f);
            engine.Parameters.RefreshCompute();
        }

        Assert.True(first > 2.5, $"a random model starts near ln(vocab); got {first}");
        Assert.True(last < first / 10, $"loss {first} → {last} after 40 steps");
    }

    [Fact]
    public void EightBitAdamWTracksThirtyTwoBitAdamWOnTheLossCurve()
    {
        (string folder, _) = TinyLlama.WriteCheckpoint();
        using LlamaForCausalLM model = LlamaForCausalLM.LoadModel(fixture.Device, folder);
        PackedBatch batch = PackedBatch.ForNextToken([[5, 12, 33, 7, 41, 2, 19, 28, 3, 46, 10, 37, 22, 8, 15, 30]]);
        var curves = new List<double[]>();
        foreach (string kind in new[] { "adamw", "adamw_8bit", "paged_adamw_8bit" })
        {
            Attach(fixture.Device, model, seed: 12);
            using var engine = new TrainingEngine(fixture.Device, EngineModel.Of(model), new EngineOptions(32));
            long count = engine.Parameters.Count;
            using AdapterOptimizer optimizer = kind switch
            {
                "adamw" => new AdamWOptimizer(fixture.Device, count, new AdamWOptions()),
                "adamw_8bit" => new EightBitAdamWOptimizer(fixture.Device, count, new AdamWOptions()),
                _ => new EightBitAdamWOptimizer(fixture.Device, count, new AdamWOptions(), pageElements: 4096),
            };
            var losses = new double[25];
            for (int step = 1; step <= losses.Length; step++)
            {
                (losses[step - 1], _) = Run(engine, [batch]);
                optimizer.Step(engine.Parameters, step, 5e-3, 1f);
                engine.Parameters.RefreshCompute();
            }

            curves.Add(losses);
        }

        // 8-bit state (relative error ≤ ~1% per moment after blockwise coding) keeps the curve within 3% of 32-bit's;
        // its paged form is the same computation.
        Assert.True(curves[0][^1] < curves[0][0] / 2, $"the task must be learned: {curves[0][0]} → {curves[0][^1]}");
        for (int step = 0; step < curves[0].Length; step++)
        {
            Assert.True(Math.Abs(curves[1][step] - curves[0][step]) <= 0.03 * curves[0][step], $"step {step + 1}: 8-bit {curves[1][step]} vs 32-bit {curves[0][step]}");
        }

        Assert.Equal(curves[1], curves[2]);
        Assert.NotEqual(curves[0], curves[1]);
    }

    [Fact]
    public void TheModelKeepsItsTrainedAdaptersAfterTheEngineAndTheirOutputIsTheEnginesLoss()
    {
        (string folder, TinyLlama.Weights weights) = TinyLlama.WriteCheckpoint();
        using LlamaForCausalLM model = LlamaForCausalLM.LoadModel(fixture.Device, folder);
        Attach(fixture.Device, model, seed: 10);
        PackedBatch batch = PackedBatch.ForNextToken([Sequences[0]]);
        double evaluated;
        float[] trained;
        using (var engine = new TrainingEngine(fixture.Device, EngineModel.Of(model), new EngineOptions(16, MaxMicroBatches: 1)))
        using (var optimizer = new AdamWOptimizer(fixture.Device, engine.Parameters.Count, new AdamWOptions()))
        {
            Run(engine, [batch]);
            optimizer.Step(engine.Parameters, 1, 1e-2, 1f);
            evaluated = engine.EvaluateLoss(batch);
            trained = engine.Parameters.Values.ToHost<float>();
            Assert.Throws<ArgumentException>(() => engine.Accumulate(PackedBatch.ForNextToken([[.. Enumerable.Range(0, 17)]]), 1f));
            Assert.Throws<ArgumentException>(() => engine.Accumulate(PackedBatch.ForNextToken([[1, TinyLlama.Vocab]]), 1f));
        }

        var lora = new Dictionary<string, TinyLlama.LoraRef>();
        foreach ((string name, QuantizedLinear layer) in EngineModel.Of(model).Projections())
        {
            LoraSlot slot = Assert.IsType<LoraSlot>(layer.Lora);
            lora[name] = new TinyLlama.LoraRef([.. slot.A.ToHost<float>().Select(v => (double)v)], [.. slot.B.ToHost<float>().Select(v => (double)v)], Rank, Alpha / Rank);
        }

        double expected = TinyLlama.Loss(weights, batch.Ids, batch.Labels, batch.Boundaries, lora);
        Assert.True(Math.Abs(evaluated - expected) <= 1e-5 * expected, $"{evaluated} vs {expected}");
        Assert.Contains(trained, v => v != 0);
    }
}

/// <summary><see cref="TrainingEngineTests{TDevice}"/> on the CPU accelerator (its CPU schedules).</summary>
public sealed class TrainingEngineTestsOnCpu(CpuDeviceFixture fixture) : TrainingEngineTests<CpuDeviceFixture>(fixture);

/// <summary><see cref="TrainingEngineTests{TDevice}"/> on CUDA (skipped without a CUDA device).</summary>
public sealed class TrainingEngineTestsOnCuda(CudaDeviceFixture fixture) : TrainingEngineTests<CudaDeviceFixture>(fixture);

/// <summary><see cref="TrainingEngineTests{TDevice}"/> on the GPU schedules' kernels, emulated on the CPU accelerator.</summary>
public sealed class TrainingEngineTestsOnGpuKernels(CpuGpuKernelsDeviceFixture fixture) : TrainingEngineTests<CpuGpuKernelsDeviceFixture>(fixture);
