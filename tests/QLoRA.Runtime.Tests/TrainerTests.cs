using QLoRA.Core;
using QLoRA.Core.Peft;
using QLoRA.Runtime.Engine;
using QLoRA.Runtime.Layers;
using QLoRA.Runtime.Models;
using QLoRA.Runtime.Training;

namespace QLoRA.Runtime.Tests;

/// <summary>
/// The trainer on the tiny Llama: resume reproduces the loss trajectory bit for bit, NaN/Inf is skipped or stops by
/// option naming the module, the memory estimate refuses a run before allocating, the adapter leaves in PEFT's format
/// and comes back exactly, and the schedules follow transformers' formulas.
/// </summary>
public abstract class TrainerTests<TDevice>(TDevice fixture) : IClassFixture<TDevice>
    where TDevice : DeviceFixture
{
    private static readonly LoraConfig Lora = LoraConfig.Parse("""{"r": 4, "lora_alpha": 8, "lora_dropout": 0.1, "target_modules": "all-linear"}""");

    private static readonly TrainerOptions Options = new()
    {
        MaxSteps = 6, LearningRate = 1e-2, WarmupRatio = 0.3, GradientAccumulation = 2, Seed = 3, Optimizer = OptimizerKind.PagedAdamW32Bit,
    };

    private static readonly PackedBatch[] MicroBatches =
    [
        PackedBatch.ForNextToken([[5, 12, 33, 7, 41, 2, 19, 28], [3, 46, 10, 37]]),
        PackedBatch.ForNextToken([[22, 8, 15, 30, 1, 9]]),
    ];

    private LoraTrainer NewTrainer(LlamaForCausalLM model, TrainerOptions? options = null) =>
        new(fixture.Device, EngineModel.Of(model), Lora, options ?? Options, new EngineOptions(16, GradientCheckpointing: true));

    [Fact]
    public void ResumingFromACheckpointReproducesTheLossTrajectoryBitForBit()
    {
        (string folder, _) = TinyLlama.WriteCheckpoint();
        double[] straight;
        float[] straightAdapters;
        using (LlamaForCausalLM model = LlamaForCausalLM.LoadModel(fixture.Device, folder))
        using (LoraTrainer trainer = NewTrainer(model))
        {
            straight = [.. Enumerable.Range(0, 6).Select(_ => trainer.TrainStep(MicroBatches).Loss)];
            straightAdapters = trainer.Engine.Parameters.Values.ToHost<float>();
        }

        string checkpoint = Path.Combine(Directory.CreateTempSubdirectory("qlora-ckpt-").FullName, "checkpoint");
        var resumed = new List<double>();
        using (LlamaForCausalLM model = LlamaForCausalLM.LoadModel(fixture.Device, folder))
        using (LoraTrainer trainer = NewTrainer(model))
        {
            resumed.AddRange(Enumerable.Range(0, 3).Select(_ => trainer.TrainStep(MicroBatches).Loss));
            TrainingCheckpoint.Save(trainer, checkpoint, dataPosition: 6);
            TrainingCheckpoint.Save(trainer, checkpoint, dataPosition: 6); // replacing a checkpoint leaves one whole folder
        }

        Assert.Single(Directory.GetDirectories(Path.GetDirectoryName(checkpoint)!));
        using (LlamaForCausalLM model = LlamaForCausalLM.LoadModel(fixture.Device, folder))
        using (LoraTrainer trainer = NewTrainer(model))
        {
            Assert.Equal(6, TrainingCheckpoint.Load(trainer, checkpoint));
            Assert.Equal(3, trainer.Step);
            resumed.AddRange(Enumerable.Range(0, 3).Select(_ => trainer.TrainStep(MicroBatches).Loss));
            Assert.Equal(straight, resumed);
            Assert.Equal(straightAdapters, trainer.Engine.Parameters.Values.ToHost<float>());
        }

        Assert.True(straight[^1] < straight[0], $"the loss must fall: {string.Join(", ", straight)}");
        // The warmup's first step runs at learning rate 0 (transformers' schedule): the first update changes nothing yet.
        Assert.Equal(0.0, new LearningRateSchedule(LearningRateScheduleKind.Constant, 2, 6).Factor(0));
    }

    [Theory]
    [InlineData(NonFinitePolicy.SkipStep)]
    [InlineData(NonFinitePolicy.Stop)]
    public void ANonFiniteParameterIsSkippedOrStopsTheRunNamingItsModule(NonFinitePolicy policy)
    {
        (string folder, _) = TinyLlama.WriteCheckpoint();
        using LlamaForCausalLM model = LlamaForCausalLM.LoadModel(fixture.Device, folder);
        var log = new RecordingLogger();
        using LoraTrainer trainer = new(fixture.Device, EngineModel.Of(model), Lora, Options with { OnNonFinite = policy }, new EngineOptions(16, GradientCheckpointing: true)) { Logger = log };
        StepReport first = trainer.TrainStep(MicroBatches);

        // The logger gets each step with the report's values under metrics.jsonl's names.
        RecordingLogger.Entry logged = Assert.Single(log.Entries);
        Assert.Equal((Microsoft.Extensions.Logging.LogLevel.Information, 1), (logged.Level, logged.EventId));
        Assert.Equal(1, logged.Values["Step"]);
        Assert.Equal(first.Loss, logged.Values["Loss"]);
        Assert.Equal(first.GradientNorm, logged.Values["GradientNorm"]);
        Assert.StartsWith("step 1: loss ", logged.Message);
        LoraParameters.Entry poisoned = trainer.Engine.Parameters.Entries.Single(e => e.Module == "model.layers.1.mlp.down_proj");
        float[] values = trainer.Engine.Parameters.Values.ToHost<float>();
        values[poisoned.A.Offset + 3] = float.NaN;
        trainer.Engine.Parameters.Values.CopyFromHost<float>(values);
        if (policy == NonFinitePolicy.Stop)
        {
            var e = Assert.Throws<TrainingDivergedException>(() => trainer.TrainStep(MicroBatches));
            Assert.Equal(2, e.Step);
            Assert.Equal("model.layers.1.mlp.down_proj", e.Module);
            Assert.Equal((Microsoft.Extensions.Logging.LogLevel.Error, 3, "model.layers.1.mlp.down_proj"), (log.Entries[^1].Level, log.Entries[^1].EventId, log.Entries[^1].Values["Module"]));
            return;
        }

        StepReport report = trainer.TrainStep(MicroBatches);
        Assert.Equal((Microsoft.Extensions.Logging.LogLevel.Warning, 2, (object?)2, "model.layers.1.mlp.down_proj"), (log.Entries[^1].Level, log.Entries[^1].EventId, log.Entries[^1].Values["Step"], log.Entries[^1].Values["Module"]));
        Assert.True(report.Skipped);
        Assert.True(double.IsNaN(report.Loss));
        Assert.Equal(1, trainer.UpdatesApplied);
        float[] after = trainer.Engine.Parameters.Values.ToHost<float>();
        Assert.Equal(values.Select(BitConverter.SingleToInt32Bits), after.Select(BitConverter.SingleToInt32Bits)); // nothing was updated
    }

    [Fact]
    public void ARunThatCannotFitIsRefusedBeforeAnythingIsAllocated()
    {
        (string folder, _) = TinyLlama.WriteCheckpoint();
        using LlamaForCausalLM model = LlamaForCausalLM.LoadModel(fixture.Device, folder);
        long before = fixture.Device.Allocator.AllocatedBytes;
        var e = Assert.Throws<TrainingMemoryException>(() => new LoraTrainer(fixture.Device, EngineModel.Of(model), Lora,
            Options with { MemoryBudgetBytes = 4 << 20 }, new EngineOptions(MaxTokens: 4096, GradientCheckpointing: false)));
        Assert.Contains("MaxTokens", e.Message);
        Assert.Contains("activations", e.Message);
        Assert.Equal(before, fixture.Device.Allocator.AllocatedBytes);
        Assert.All(EngineModel.Of(model).Projections(), p => Assert.Null(p.Layer.Lora));

        // The estimate's parts are the engine's own figures.
        MemoryEstimate fits = MemoryEstimate.For(EngineModel.Of(model), Lora, new EngineOptions(16), Options);
        using LoraTrainer trainer = NewTrainer(model);
        Assert.Equal(trainer.Engine.Layout.Bytes, fits.ActivationBytes);
        Assert.Equal(trainer.Engine.Parameters.Values.ByteLength + trainer.Engine.Parameters.Gradients.ByteLength + (trainer.Engine.Parameters.Compute?.ByteLength ?? 0), fits.AdapterBytes);
        Assert.Equal(trainer.Optimizer.DeviceStateBytes, fits.OptimizerBytes);
    }

    [Fact]
    public void TheAdapterLeavesInPeftsFormatAndComesBackExactly()
    {
        (string folder, _) = TinyLlama.WriteCheckpoint();
        string adapterFolder = Directory.CreateTempSubdirectory("qlora-adapter-").FullName;
        double trainedLoss;
        float[] trained;
        using (LlamaForCausalLM model = LlamaForCausalLM.LoadModel(fixture.Device, folder))
        using (LoraTrainer trainer = NewTrainer(model))
        {
            trainer.TrainStep(MicroBatches);
            trainer.TrainStep(MicroBatches);
            trainer.ExportAdapter().Save(adapterFolder);
            trainedLoss = trainer.Evaluate(MicroBatches).Loss;
            trained = trainer.Engine.Parameters.Values.ToHost<float>();
        }

        LoraAdapter saved = LoraAdapter.Load(adapterFolder);
        Assert.Equal(14, saved.Modules.Count);
        Assert.Equal(4, saved.Config.R);
        Assert.True(File.Exists(Path.Combine(adapterFolder, "adapter_model.safetensors")));
        using (LlamaForCausalLM model = LlamaForCausalLM.LoadModel(fixture.Device, folder))
        {
            LoraAttachment.AttachSaved(fixture.Device, model.EnumerateLayers(), saved);
            using var engine = new TrainingEngine(fixture.Device, EngineModel.Of(model), new EngineOptions(16));
            Assert.Equal(trained, engine.Parameters.Values.ToHost<float>());
            Assert.Equal(trainedLoss, MicroBatches.Sum(b => engine.EvaluateLoss(b) * b.TargetTokens) / MicroBatches.Sum(b => b.TargetTokens), 12);
        }
    }

    [Fact]
    public void ModulesToSaveTrainLeaveInPeftsFormatAndComeBackIntoAttachAndMerge()
    {
        (string folder, _) = TinyLlama.WriteCheckpoint();
        LoraConfig lora = LoraConfig.Parse("""{"r": 4, "lora_alpha": 8, "target_modules": "all-linear", "modules_to_save": ["norm", "lm_head"]}""");
        string adapterFolder = Directory.CreateTempSubdirectory("qlora-adapter-saved-").FullName;
        double trainedLoss;
        float[] finalNorm, lmHead, before;
        using (LlamaForCausalLM model = LlamaForCausalLM.LoadModel(fixture.Device, folder))
        {
            before = model.Norm.Weight.ToHost<float>();
            using LoraTrainer trainer = new(fixture.Device, EngineModel.Of(model), lora, Options with { Optimizer = OptimizerKind.AdamW }, new EngineOptions(16));
            // "norm" matches as PEFT matches it: the final norm and both norms of each block; lm_head is not tied here.
            Assert.Equal(["model.layers.0.input_layernorm", "model.layers.0.post_attention_layernorm", "model.layers.1.input_layernorm", "model.layers.1.post_attention_layernorm", "model.norm", "lm_head"],
                trainer.Engine.Parameters.WholeModules.Select(w => w.Module));
            trainer.TrainStep(MicroBatches);
            trainer.TrainStep(MicroBatches);
            trainer.ExportAdapter().Save(adapterFolder);
            trainedLoss = trainer.Evaluate(MicroBatches).Loss;
            finalNorm = model.Norm.Weight.ToHost<float>();
            lmHead = model.LmHead.Weight.ToHost<float>();
        }

        // The optimizer moved the whole modules (the model's own tensors follow their masters after each step).
        Assert.NotEqual(before, finalNorm);
        LoraAdapter saved = LoraAdapter.Load(adapterFolder);
        Assert.Equal(6, saved.SavedModules.Count);
        Assert.Equal(finalNorm, saved.SavedModules["model.norm.weight"].ToSingle());
        Assert.Equal(lmHead, saved.SavedModules["lm_head.weight"].ToSingle());

        // Attached to a fresh base: the saved modules replace its weights and the loss is the trained model's.
        using (LlamaForCausalLM model = LlamaForCausalLM.LoadModel(fixture.Device, folder))
        {
            LoraAttachment.AttachSaved(fixture.Device, model.EnumerateLayers(), saved);
            Assert.Equal(finalNorm, model.Norm.Weight.ToHost<float>());
            using var engine = new TrainingEngine(fixture.Device, EngineModel.Of(model), new EngineOptions(16));
            Assert.Equal(trainedLoss, MicroBatches.Sum(b => engine.EvaluateLoss(b) * b.TargetTokens) / MicroBatches.Sum(b => b.TargetTokens), 12);
            // A serving adapter cannot replace base weights per request: refused, naming a saved module.
            var refused = Assert.Throws<PeftAdapterException>(() => QLoRA.Runtime.Generation.ServingAdapter.Create(EngineModel.Of(model), "saved", saved));
            Assert.Contains("modules_to_save", refused.Message);
        }

        // Merged into bf16: the saved modules replace the base's tensors (rounded to bf16 as the merge writes).
        string merged = Path.Combine(Directory.CreateTempSubdirectory("qlora-merged-saved-").FullName, "merged");
        LoraMerger.Merge(folder, saved, merged);
        using var file = QLoRA.Core.SafeTensors.SafeTensorsFile.Open(Path.Combine(merged, "model.safetensors"));
        ushort[] mergedNorm = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, ushort>(file.GetBytes("model.norm.weight")).ToArray();
        Assert.Equal(finalNorm.Select(v => QLoRA.Core.Numerics.BFloat16.FromSingle(v).Bits), mergedNorm);
    }

    // Prompt/completion examples: only the completion (and its closing token 49, standing for EOS) is trained.
    private static List<QLoRA.Text.TrainingExample> Examples(int count, int seed)
    {
        var rng = new Random(seed);
        return [.. Enumerable.Range(0, count).Select(_ =>
        {
            int prompt = rng.Next(2, 6), completion = rng.Next(2, 6);
            int first = rng.Next(1, 40);
            int[] ids = [.. Enumerable.Range(0, prompt).Select(_ => rng.Next(1, 40)), .. Enumerable.Range(0, completion).Select(i => (first + i) % 40 + 1), 49];
            return new QLoRA.Text.TrainingExample(ids, [.. ids.Select((_, i) => i >= prompt)]);
        })];
    }

    [Fact]
    public void FitPacksLogsEvaluatesAndACancelledRunResumesWhereItStopped()
    {
        (string folder, _) = TinyLlama.WriteCheckpoint();
        List<QLoRA.Text.TrainingExample> train = Examples(24, 1), eval = Examples(4, 2);
        TrainerOptions options = Options with { MaxSteps = 8 };
        var fit = new FitOptions { Epochs = 3, EvalEvery = 4 };
        double[] straight;
        using (LlamaForCausalLM model = LlamaForCausalLM.LoadModel(fixture.Device, folder))
        using (LoraTrainer trainer = NewTrainer(model, options))
        {
            var losses = new List<double>();
            trainer.StepCompleted += r => losses.Add(r.Loss);
            FitResult result = trainer.Fit(train, eval, fit with { OutputDirectory = Directory.CreateTempSubdirectory("qlora-fit-").FullName }, TestContext.Current.CancellationToken);
            Assert.Equal(8, result.Steps);
            Assert.False(result.Cancelled);
            Assert.NotNull(result.EvalLoss);
            straight = [.. losses];
        }

        string output = Directory.CreateTempSubdirectory("qlora-fit-").FullName;
        var log = new RecordingLogger();
        using (LlamaForCausalLM model = LlamaForCausalLM.LoadModel(fixture.Device, folder))
        using (LoraTrainer trainer = new(fixture.Device, EngineModel.Of(model), Lora, options, new EngineOptions(16, GradientCheckpointing: true)) { Logger = log })
        using (var cts = new CancellationTokenSource())
        {
            trainer.StepCompleted += r => { if (r.Step == 3) { cts.Cancel(); } }; // Ctrl-C during step 3
            FitResult result = trainer.Fit(train, eval, fit with { OutputDirectory = output }, cts.Token);
            // Logged: the start (trainable parameters, the memory estimate), three steps, the checkpoint written on Ctrl-C.
            Assert.Equal([6, 1, 1, 1, 5], log.Entries.Select(e => e.EventId));
            Assert.Equal(trainer.Engine.Parameters.TrainableCount, log.Entries[0].Values["TrainableParameters"]);
            Assert.Equal(Path.Combine(output, "checkpoint-3"), log.Entries[^1].Values["Path"]);
            Assert.True(result.Cancelled);
            Assert.Equal(3, result.Steps);
            Assert.Equal(Path.Combine(output, "checkpoint-3"), result.LastCheckpoint);
            Assert.False(Directory.Exists(Path.Combine(output, "adapter")));
        }

        using (LlamaForCausalLM model = LlamaForCausalLM.LoadModel(fixture.Device, folder))
        using (LoraTrainer trainer = NewTrainer(model, options))
        {
            var losses = new List<double>();
            trainer.StepCompleted += r => losses.Add(r.Loss);
            FitResult result = trainer.Fit(train, eval, fit with { OutputDirectory = output, ResumeFrom = Path.Combine(output, "checkpoint-3") }, TestContext.Current.CancellationToken);
            Assert.Equal(8, result.Steps);
            Assert.Equal(straight[3..], losses); // the same micro-batches, masks and updates as the uninterrupted run
        }

        string[] lines = File.ReadAllLines(Path.Combine(output, "metrics.jsonl"));
        Assert.Equal(8, lines.Count(l => l.Contains("\"loss\"", StringComparison.Ordinal)));
        Assert.Equal(3, lines.Count(l => l.Contains("eval_loss", StringComparison.Ordinal))); // steps 4 and 8, and the end
        Assert.True(File.Exists(Path.Combine(output, "adapter", "adapter_model.safetensors")));
        Assert.True(straight[^1] < straight[0], $"the loss must fall: {string.Join(", ", straight)}");
    }

    [Fact]
    public void MergingIntoBf16AddsTheAdapterExactlyAndIntoFourBitRequantizesIt()
    {
        (string folder, TinyLlama.Weights weights) = TinyLlama.WriteCheckpoint();
        File.WriteAllText(Path.Combine(folder, "generation_config.json"), """{"eos_token_id": 2}""");
        int[] ids = [3, 17, 42, 0, 9, 9, 31];
        LoraAdapter adapter;
        float[] adapted;
        using (LlamaForCausalLM model = LlamaForCausalLM.LoadModel(fixture.Device, folder))
        {
            using (LoraTrainer trainer = NewTrainer(model))
            {
                trainer.TrainStep(MicroBatches);
                trainer.TrainStep(MicroBatches);
                adapter = trainer.ExportAdapter();
            }

            adapted = model.Forward(ids); // the 4-bit base with the trained adapters (kept by the model)
        }

        string merged = Path.Combine(Directory.CreateTempSubdirectory("qlora-merge-").FullName, "merged");
        LoraMerger.Merge(folder, adapter, merged);
        using (var file = QLoRA.Core.SafeTensors.SafeTensorsFile.Open(Path.Combine(merged, "model.safetensors")))
        {
            // W = dequant(NF4(stored)) + s·B·A, rounded once to bf16 — written out here element by element.
            string module = "model.layers.1.self_attn.v_proj";
            (float[] w, int outF, int inF) = weights.Linear[module + ".weight"];
            float[] a = adapter.Modules[module].A.ToSingle(), b = adapter.Modules[module].B.ToSingle();
            ushort[] got = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, ushort>(file.GetBytes(module + ".weight")).ToArray();
            for (int o = 0; o < outF; o++)
            {
                for (int i = 0; i < inF; i++)
                {
                    double delta = Enumerable.Range(0, 4).Sum(r => (double)b[(o * 4) + r] * a[(r * inF) + i]);
                    ushort expected = QLoRA.Core.Numerics.BFloat16.FromSingle((float)(w[(o * inF) + i] + (2.0 * delta))).Bits;
                    Assert.Equal(expected, got[(o * inF) + i]);
                }
            }

            Assert.Equal(DType.BF16, file.GetInfo("model.norm.weight").Dtype);
        }

        string config = File.ReadAllText(Path.Combine(merged, "config.json"));
        Assert.DoesNotContain("quantization_config", config);
        Assert.True(File.Exists(Path.Combine(merged, "generation_config.json")));
        using (LlamaForCausalLM model = LlamaForCausalLM.LoadModel(fixture.Device, merged, new QLoRA.Modeling.LoadOptions(KeepProjectionsDense: true)))
        {
            // The merged model computes what base + adapter did, up to rounding the merged weights to bf16 (2⁻⁹ relative).
            float[] logits = model.Forward(ids);
            double rms = Math.Sqrt(adapted.Average(v => (double)v * v));
            double error = Math.Sqrt(adapted.Zip(logits).Average(p => (double)(p.First - p.Second) * (p.First - p.Second)));
            Assert.True(error <= 1e-2 * rms, $"error RMS {error} vs logit RMS {rms}");
        }

        string fourBit = Path.Combine(Path.GetDirectoryName(merged)!, "merged-nf4");
        LoraMerger.Merge(folder, adapter, fourBit, new MergeOptions { Weights = MergedWeights.FourBit });
        Assert.Contains("\"quant_method\": \"bitsandbytes\"", File.ReadAllText(Path.Combine(fourBit, "config.json")));
        using (var file = QLoRA.Core.SafeTensors.SafeTensorsFile.Open(Path.Combine(fourBit, "model.safetensors")))
        using (var dense = QLoRA.Core.SafeTensors.SafeTensorsFile.Open(Path.Combine(merged, "model.safetensors")))
        {
            string name = "model.layers.0.mlp.down_proj.weight";
            QLoRA.Core.Quantization.QuantizedTensor q = QLoRA.Core.BitsAndBytes.BnbFourBitTensor.Read(file, name);
            float[] exact = LoraMerger.AddDelta(weights.Linear[name].W, adapter.Modules["model.layers.0.mlp.down_proj"], 2.0);
            Assert.Equal(QLoRA.Core.Quantization.QuantizedTensor.Quantize(exact, [TinyLlama.Hidden, TinyLlama.Inter]).Packed.ToArray(), q.Packed.ToArray());
            Assert.Equal(DType.BF16, file.GetInfo("lm_head.weight").Dtype); // kept dense
        }

        using (LlamaForCausalLM model = LlamaForCausalLM.LoadModel(fixture.Device, fourBit))
        {
            Assert.NotNull(model.Layers[0].DownProj.Weight);
        }
    }

    [Fact]
    public void LoftQStartsCloserToTheDenseWeightsThanQuantizingAndZeroB()
    {
        (string folder, TinyLlama.Weights weights) = TinyLlama.WriteCheckpoint();
        using LlamaForCausalLM model = LlamaForCausalLM.LoadModel(fixture.Device, folder);
        using LoraTrainer trainer = NewTrainer(model, Options with { LoftQ = new LoftQOptions(folder, Iterations: 2) });
        LoraAdapter adapter = trainer.ExportAdapter();
        string module = "model.layers.0.mlp.gate_proj";
        QuantizedLinear layer = model.Layers[0].GateProj;
        using var q = QLoRA.Runtime.Tensors.DeviceTensor.Allocate(fixture.Device, DType.F32, layer.OutFeatures, layer.InFeatures);
        layer.Weight!.DequantizeToF32(q.View<float>());
        float[] adjusted = q.ToHost<float>();
        (float[] stored, int outF, int inF) = weights.Stored[module + ".weight"];
        float[] plain = weights.Linear[module + ".weight"].W; // NF4 of the stored weights, what a PEFT-init run trains on
        float[] a = adapter.Modules[module].A.ToSingle(), b = adapter.Modules[module].B.ToSingle();
        double loftQ = 0, zeroB = 0;
        for (int o = 0; o < outF; o++)
        {
            for (int i = 0; i < inF; i++)
            {
                double ba = Enumerable.Range(0, 4).Sum(r => (double)b[(o * 4) + r] * a[(r * inF) + i]);
                loftQ += Math.Pow(stored[(o * inF) + i] - (adjusted[(o * inF) + i] + (2.0 * ba)), 2);
                zeroB += Math.Pow(stored[(o * inF) + i] - plain[(o * inF) + i], 2);
            }
        }

        Assert.True(Math.Sqrt(loftQ) < 0.95 * Math.Sqrt(zeroB), $"‖W − (Q + s·BA)‖ {Math.Sqrt(loftQ)} vs ‖W − Q‖ {Math.Sqrt(zeroB)}");
        Assert.NotEqual(plain, adjusted); // the base itself was re-quantized
        Assert.True(double.IsFinite(trainer.TrainStep(MicroBatches).Loss));

        // LoftQ needs the dense weights: a 4-bit checkpoint cannot seed it.
        string fourBit = Path.Combine(Directory.CreateTempSubdirectory("qlora-loftq-").FullName, "nf4");
        LoraMerger.Merge(folder, adapter, fourBit, new MergeOptions { Weights = MergedWeights.FourBit });
        using LlamaForCausalLM other = LlamaForCausalLM.LoadModel(fixture.Device, folder);
        var e = Assert.Throws<CheckpointFormatException>(() => NewTrainer(other, Options with { LoftQ = new LoftQOptions(fourBit) }));
        Assert.Contains("LoftQ needs the dense", e.Message);
    }

    [Fact]
    public void AStepIsNormalizedByAllItsTargetsClippedByTheGlobalNormAndScheduled()
    {
        (string folder, TinyLlama.Weights weights) = TinyLlama.WriteCheckpoint();
        using LlamaForCausalLM model = LlamaForCausalLM.LoadModel(fixture.Device, folder);
        TrainerOptions options = Options with { Optimizer = OptimizerKind.AdamW, MaxGradNorm = 1e-3, WarmupRatio = 0.5, MaxSteps = 4 };
        using LoraTrainer trainer = NewTrainer(model, options);
        StepReport first = trainer.TrainStep(MicroBatches);

        // PEFT's start (B = 0) is the base model: the loss is the float64 base's mean over all 14 targets of both micro-batches.
        int[] ids = [.. MicroBatches.SelectMany(b => b.Ids)], labels = [.. MicroBatches.SelectMany(b => b.Labels)];
        int[] boundaries = [0, 8, 12, 18];
        double expected = TinyLlama.Loss(weights, ids, labels, boundaries);
        Assert.True(Math.Abs(first.Loss - expected) <= 1e-5 * expected, $"{first.Loss} vs {expected}");

        // The global norm is the gradients' L2 norm; AdamW saw them times max_norm / (norm + 1e-6): m = (1 − β₁)·g·clip.
        float[] g = trainer.Engine.Parameters.Gradients.ToHost<float>();
        double norm = Math.Sqrt(g.Sum(x => (double)x * x));
        Assert.True(Math.Abs(first.GradientNorm - norm) <= 1e-5 * norm, $"{first.GradientNorm} vs {norm}");
        double clip = 1e-3 / (norm + 1e-6);
        Assert.True(clip < 1, "the test needs the clipping active");
        float[] m = trainer.Optimizer.ReadState()["exp_avg"].ToSingle();
        for (int i = 0; i < g.Length; i++)
        {
            Assert.True(Math.Abs(m[i] - (0.1 * g[i] * clip)) <= 1e-6 * Math.Abs(g[i] * clip) + 1e-30, $"m[{i}] {m[i]} vs {0.1 * g[i] * clip}");
        }

        // Warmup over ceil(0.5 × 4) = 2 steps: 0, then half the peak, then the peak.
        Assert.Equal(0.0, first.LearningRate);
        Assert.Equal(0.5 * options.LearningRate, trainer.TrainStep(MicroBatches).LearningRate, 12);
        Assert.Equal(options.LearningRate, trainer.TrainStep(MicroBatches).LearningRate, 12);
    }

    [Fact]
    public void SchedulesFollowTransformersFormulas()
    {
        var constant = LearningRateSchedule.WithWarmupRatio(LearningRateScheduleKind.Constant, 0.03, 100);
        Assert.Equal(3, constant.WarmupSteps); // ceil(0.03 × 100)
        Assert.Equal([0.0, 1 / 3.0, 2 / 3.0, 1.0, 1.0], Enumerable.Range(0, 5).Select(constant.Factor));
        var linear = new LearningRateSchedule(LearningRateScheduleKind.Linear, 2, 10);
        Assert.Equal(0.5, linear.Factor(1));
        Assert.Equal(1.0, linear.Factor(2));
        Assert.Equal(0.5, linear.Factor(6), 12);
        Assert.Equal(0.0, linear.Factor(10));
        var cosine = new LearningRateSchedule(LearningRateScheduleKind.Cosine, 0, 10);
        Assert.Equal(1.0, cosine.Factor(0));
        Assert.Equal(0.5, cosine.Factor(5), 12);
        Assert.Equal(0.5 * (1 + Math.Cos(Math.PI * 0.7)), cosine.Factor(7), 12);
        Assert.Throws<ArgumentOutOfRangeException>(() => LearningRateSchedule.WithWarmupRatio(LearningRateScheduleKind.Constant, 1.5, 10));
    }
}

/// <summary><see cref="TrainerTests{TDevice}"/> on the CPU accelerator.</summary>
public sealed class TrainerTestsOnCpu(CpuDeviceFixture fixture) : TrainerTests<CpuDeviceFixture>(fixture);

/// <summary><see cref="TrainerTests{TDevice}"/> on CUDA (skipped without a CUDA device).</summary>
public sealed class TrainerTestsOnCuda(CudaDeviceFixture fixture) : TrainerTests<CudaDeviceFixture>(fixture);

/// <summary><see cref="TrainerTests{TDevice}"/> on the GPU schedules' kernels, emulated on the CPU accelerator.</summary>
public sealed class TrainerTestsOnGpuKernels(CpuGpuKernelsDeviceFixture fixture) : TrainerTests<CpuGpuKernelsDeviceFixture>(fixture);
