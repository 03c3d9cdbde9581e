using System.Diagnostics;
using System.Text.Json.Nodes;
using QLoRA.Core;
using QLoRA.Core.HuggingFace;
using QLoRA.Runtime.Devices;
using QLoRA.Runtime.Layers;
using QLoRA.Runtime.Models;
using QLoRA.Runtime.Ops;
using QLoRA.Runtime.Tensors;

namespace QLoRA.Bench;

/// <summary>
/// One LoRA training step of the small Llama on the CPU (4 sequences × 256 tokens packed, r16 on all seven projections,
/// f32 compute, NF4 base): forward keeping each block's activations, the fused lm_head + cross-entropy, the backward
/// through every block, and AdamW on the adapters — composed from the runtime's ops until the training engine lands —
/// next to the same step in PyTorch (bench/cpu/torch_train_step.py, dense float32 base) in the same run.
/// </summary>
internal static class CpuTrainStepBenchmark
{
    private const int Sequences = 4, SeqLen = 256, Rank = 16;

    public static int Run(string[] args)
    {
        int reps = args.Length > 1 && int.TryParse(args[1], out int r) ? r : 5;
        string folder = CpuForwardBenchmark.WriteCheckpoint();
        try
        {
            using Device device = Device.Cpu();
            using LlamaForCausalLM model = LlamaForCausalLM.LoadModel(device, folder);
            using var step = new Step(device, model);
            var losses = new List<double>();
            losses.Add(step.Run(1));
            var times = new double[reps];
            for (int i = 0; i < reps; i++)
            {
                var sw = Stopwatch.StartNew();
                losses.Add(step.Run(i + 2));
                times[i] = sw.Elapsed.TotalSeconds;
            }

            Array.Sort(times);
            double ours = times[reps / 2];
            (double? torch, double? torchLoss) = TorchPeer(folder, reps);
            double? before = null;
            if (args.Contains("--before"))
            {
                // The same step with the GPU schedules' kernels on emulated warps: what the CPU ran before its schedules.
                using Device gpuSchedules = Device.Cpu(2, 1, cpuSchedules: false);
                using LlamaForCausalLM slow = LlamaForCausalLM.LoadModel(gpuSchedules, folder);
                using var slowStep = new Step(gpuSchedules, slow);
                var sw = Stopwatch.StartNew();
                slowStep.Run(1);
                before = sw.Elapsed.TotalSeconds;
            }

            Console.WriteLine();
            Console.WriteLine($"LoRA training step, small Llama (hidden 256, 4 layers, {Sequences}×{SeqLen} tokens, r{Rank} on all projections, f32), {Environment.ProcessorCount} cores, median of {reps}");
            Console.WriteLine("| implementation | step | loss at step 1 |");
            Console.WriteLine("| --- | ---: | ---: |");
            Console.WriteLine($"| QLoRA.Sdk on the CPU accelerator (NF4 base) | {ours:F3} s | {losses[0]:F4} |");
            Console.WriteLine(torch is double t
                ? $"| PyTorch (dense float32 base) | {t:F3} s | {torchLoss:F4} |"
                : "| PyTorch | not run: apt-get install python3-torch libopenblas0-pthread | |");
            if (before is double b)
            {
                Console.WriteLine($"| the same step, GPU schedules on emulated warps (before) | {b:F3} s | |");
            }

            Console.WriteLine($"losses over the steps: {string.Join(", ", losses.Select(l => l.ToString("F4", System.Globalization.CultureInfo.InvariantCulture)))}");
            if (torch is double peer)
            {
                Console.WriteLine($"ours / PyTorch: {ours / peer:F2}× (target ≤ 3×)");
            }

            Console.WriteLine(new JsonObject
            {
                ["benchmark"] = "cpu-train-step",
                ["step_s"] = ours,
                ["torch_step_s"] = torch,
                ["ours_over_torch"] = torch is double q ? ours / q : null,
                ["before_s"] = before,
                ["first_loss"] = losses[0],
                ["last_loss"] = losses[^1],
                ["processors"] = Environment.ProcessorCount,
            }.ToJsonString());
            return 0;
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }

    /// <summary>The step's buffers (allocated once) and the step itself, top to bottom.</summary>
    private sealed class Step : IDisposable
    {
        private readonly Device _device;
        private readonly LlamaForCausalLM _model;
        private readonly HfModelConfig _c;
        private readonly List<DeviceTensor> _owned = [];
        private readonly int[] _ids, _labels, _boundaries;
        private readonly DeviceTensor _positions, _invFreq;
        private readonly Block[] _blocks;
        private readonly DeviceTensor _final, _finalNorm, _finalInv, _dFinalNorm, _dX, _dNormWeight;
        private readonly DeviceTensor _dh, _dhPart, _dAct, _dGate, _dUp, _dAttn, _dq, _dk, _dv, _dxPart;
        private readonly List<(LoraSlot Slot, DeviceTensor MA, DeviceTensor VA, DeviceTensor MB, DeviceTensor VB)> _adapters = [];

        public Step(Device device, LlamaForCausalLM model)
        {
            _device = device;
            _model = model;
            _c = model.Config;
            int t = Sequences * SeqLen, hidden = _c.HiddenSize, inter = _c.IntermediateSize;
            _ids = [.. Enumerable.Range(0, t).Select(i => ((i * 37) + (i / SeqLen * 11)) % _c.VocabSize)];
            _labels = [.. Enumerable.Range(0, t).Select(i => (i + 1) % SeqLen == 0 ? CrossEntropy.DefaultIgnoreIndex : _ids[i + 1])];
            _boundaries = [.. Enumerable.Range(0, Sequences + 1).Select(s => s * SeqLen)];
            _positions = Own(DeviceTensor.FromHost<int>(device, [.. Enumerable.Range(0, t).Select(i => i % SeqLen)], DType.I32, t));
            _invFreq = Own(DeviceTensor.FromHost<float>(device, RopeFrequencies.Compute(_c.Rope, _c.HeadDim), DType.F32, _c.HeadDim / 2));
            _blocks = [.. model.Layers.Select(_ => new Block(this, t))];
            _final = F(t, hidden);
            _finalNorm = F(t, hidden);
            _finalInv = F(t);
            _dFinalNorm = F(t, hidden);
            _dX = F(t, hidden);
            _dNormWeight = F(hidden);
            _dh = F(t, hidden);
            _dhPart = F(t, hidden);
            _dxPart = F(t, hidden);
            _dAct = F(t, inter);
            _dGate = F(t, inter);
            _dUp = F(t, inter);
            _dAttn = F(t, _c.QueryDim);
            _dq = F(t, _c.QueryDim);
            _dk = F(t, _c.KeyValueDim);
            _dv = F(t, _c.KeyValueDim);
            var rng = new Random(3);
            foreach (LlamaDecoderLayer layer in model.Layers)
            {
                foreach (QuantizedLinear projection in new[] { layer.QProj, layer.KProj, layer.VProj, layer.OProj, layer.GateProj, layer.UpProj, layer.DownProj })
                {
                    // PEFT's default init: A kaiming-uniform (bound 1/sqrt(in)), B zero; α = r: scaling 1.
                    double bound = 1 / Math.Sqrt(projection.InFeatures);
                    float[] a = [.. Enumerable.Range(0, Rank * projection.InFeatures).Select(_ => (float)(((rng.NextDouble() * 2) - 1) * bound))];
                    var slot = new LoraSlot(device, a, new float[projection.OutFeatures * Rank], Rank, projection.InFeatures, projection.OutFeatures, 1f);
                    projection.Lora = slot;
                    _adapters.Add((slot, Zero(slot.A), Zero(slot.A), Zero(slot.B), Zero(slot.B)));
                }
            }
        }

        private DeviceTensor Own(DeviceTensor tensor)
        {
            _owned.Add(tensor);
            return tensor;
        }

        private DeviceTensor F(params long[] shape) => Own(DeviceTensor.Allocate(_device, DType.F32, shape));

        private DeviceTensor Zero(DeviceTensor like) => Own(DeviceTensor.FromHost<float>(_device, new float[like.ElementCount], DType.F32, [.. like.Shape]));

        /// <summary>What one block's backward needs from its forward.</summary>
        private sealed class Block(Step s, int t)
        {
            public DeviceTensor Input { get; } = s.F(t, s._c.HiddenSize);
            public DeviceTensor Normed { get; } = s.F(t, s._c.HiddenSize);
            public DeviceTensor Inv { get; } = s.F(t);
            public DeviceTensor Q { get; } = s.F(t, s._c.QueryDim);
            public DeviceTensor K { get; } = s.F(t, s._c.KeyValueDim);
            public DeviceTensor V { get; } = s.F(t, s._c.KeyValueDim);
            public DeviceTensor Attn { get; } = s.F(t, s._c.QueryDim);
            public DeviceTensor Lse { get; } = s.F(t, s._c.NumAttentionHeads);
            public DeviceTensor Mid { get; } = s.F(t, s._c.HiddenSize);
            public DeviceTensor Normed2 { get; } = s.F(t, s._c.HiddenSize);
            public DeviceTensor Inv2 { get; } = s.F(t);
            public DeviceTensor Gate { get; } = s.F(t, s._c.IntermediateSize);
            public DeviceTensor Up { get; } = s.F(t, s._c.IntermediateSize);
            public DeviceTensor Act { get; } = s.F(t, s._c.IntermediateSize);
            public DeviceTensor Projected { get; } = s.F(t, s._c.HiddenSize);
        }

        private (DeviceTensor Q, DeviceTensor K, DeviceTensor V) Heads(DeviceTensor q, DeviceTensor k, DeviceTensor v)
        {
            long t = q.Shape[0];
            return (q.Reshape(t, _c.NumAttentionHeads, _c.HeadDim), k.Reshape(t, _c.NumKeyValueHeads, _c.HeadDim), v.Reshape(t, _c.NumKeyValueHeads, _c.HeadDim));
        }

        public double Run(int stepNumber)
        {
            foreach (var adapter in _adapters)
            {
                adapter.Slot.ZeroGradients();
            }

            // Forward, keeping each block's activations.
            DeviceTensor x = _blocks[0].Input;
            _model.Embed.Forward(_ids, x);
            for (int l = 0; l < _blocks.Length; l++)
            {
                Block b = _blocks[l];
                LlamaDecoderLayer layer = _model.Layers[l];
                layer.InputLayernorm.Forward(b.Input, b.Normed, b.Inv);
                layer.QProj.Forward(b.Normed, b.Q, training: true);
                layer.KProj.Forward(b.Normed, b.K, training: true);
                layer.VProj.Forward(b.Normed, b.V, training: true);
                (DeviceTensor q3, DeviceTensor k3, DeviceTensor v3) = Heads(b.Q, b.K, b.V);
                Rope.Forward(q3, _positions, _invFreq);
                Rope.Forward(k3, _positions, _invFreq);
                Attention.Forward(q3, k3, v3, _boundaries, b.Attn.Reshape(q3.Shape[0], q3.Shape[1], q3.Shape[2]), b.Lse);
                layer.OProj.Forward(b.Attn, b.Projected, training: true);
                Elementwise.Add(b.Input, b.Projected, b.Mid);
                layer.PostAttentionLayernorm.Forward(b.Mid, b.Normed2, b.Inv2);
                layer.GateProj.Forward(b.Normed2, b.Gate, training: true);
                layer.UpProj.Forward(b.Normed2, b.Up, training: true);
                SwiGlu.Forward(b.Gate, b.Up, b.Act);
                layer.DownProj.Forward(b.Act, b.Projected, training: true);
                Elementwise.Add(b.Mid, b.Projected, l + 1 < _blocks.Length ? _blocks[l + 1].Input : _final);
            }

            _model.Norm.Forward(_final, _finalNorm, _finalInv);
            double loss = CrossEntropy.ForwardBackward(_finalNorm, _model.LmHead.Weight, _labels, _dFinalNorm, null);
            _model.Norm.Backward(_final, _dFinalNorm, _finalInv, _dX, _dNormWeight);

            // Backward, block by block from the top.
            for (int l = _blocks.Length - 1; l >= 0; l--)
            {
                Block b = _blocks[l];
                LlamaDecoderLayer layer = _model.Layers[l];
                layer.DownProj.Backward(b.Act, _dX, _dAct, training: true);
                SwiGlu.Backward(b.Gate, b.Up, _dAct, _dGate, _dUp);
                layer.GateProj.Backward(b.Normed2, _dGate, _dh, training: true);
                layer.UpProj.Backward(b.Normed2, _dUp, _dhPart, training: true);
                Elementwise.Add(_dh, _dhPart, _dh);
                layer.PostAttentionLayernorm.Backward(b.Mid, _dh, b.Inv2, _dxPart, _dNormWeight);
                Elementwise.Add(_dX, _dxPart, _dX); // dMid
                layer.OProj.Backward(b.Attn, _dX, _dAttn, training: true);
                (DeviceTensor q3, DeviceTensor k3, DeviceTensor v3) = Heads(b.Q, b.K, b.V);
                (DeviceTensor dq3, DeviceTensor dk3, DeviceTensor dv3) = Heads(_dq, _dk, _dv);
                DeviceTensor attn3 = b.Attn.Reshape(q3.Shape[0], q3.Shape[1], q3.Shape[2]);
                Attention.Backward(q3, k3, v3, _boundaries, attn3, b.Lse, _dAttn.Reshape(q3.Shape[0], q3.Shape[1], q3.Shape[2]), dq3, dk3, dv3);
                Rope.Backward(dq3, _positions, _invFreq);
                Rope.Backward(dk3, _positions, _invFreq);
                layer.QProj.Backward(b.Normed, _dq, _dh, training: true);
                layer.KProj.Backward(b.Normed, _dk, _dhPart, training: true);
                Elementwise.Add(_dh, _dhPart, _dh);
                layer.VProj.Backward(b.Normed, _dv, _dhPart, training: true);
                Elementwise.Add(_dh, _dhPart, _dh);
                layer.InputLayernorm.Backward(b.Input, _dh, b.Inv, _dxPart, _dNormWeight);
                Elementwise.Add(_dX, _dxPart, _dX); // dInput: the gradient flowing into the block below
            }

            var options = new AdamWOptions(LearningRate: 1e-3);
            foreach ((LoraSlot slot, DeviceTensor ma, DeviceTensor va, DeviceTensor mb, DeviceTensor vb) in _adapters)
            {
                AdamW.Step(slot.A, slot.GradA, ma, va, stepNumber, options);
                AdamW.Step(slot.B, slot.GradB, mb, vb, stepNumber, options);
            }

            _device.Stream.Synchronize();
            return loss;
        }

        public void Dispose()
        {
            foreach (DeviceTensor tensor in _owned)
            {
                tensor.Dispose();
            }
        }
    }

    private static (double? Seconds, double? Loss) TorchPeer(string folder, int reps) =>
        PythonPeer.Run("torch_train_step.py", null, folder, Environment.ProcessorCount, reps) is JsonNode node
            ? (node[0]!["seconds"]!.GetValue<double>(), node[0]!["first_loss"]!.GetValue<double>())
            : (null, null);
}
