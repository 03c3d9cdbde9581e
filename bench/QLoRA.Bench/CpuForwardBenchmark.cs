using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Text.Json.Nodes;
using QLoRA.Core;
using QLoRA.Core.Numerics;
using QLoRA.Core.SafeTensors;
using QLoRA.Runtime.Devices;
using QLoRA.Runtime.Models;

namespace QLoRA.Bench;

/// <summary>
/// Forward of 256 tokens through the small Llama of the CPU targets (hidden 256, 4 layers, 8 heads / 2 kv heads,
/// intermediate 688, vocab 1024; NF4 projections) on the CPU accelerator: with its CPU schedules (SIMD GEMM,
/// barrier-free attention) and, in the same run, with the GPU schedules' kernels on emulated warps — what the CPU ran
/// before. Prints a table and one JSON record.
/// </summary>
internal static class CpuForwardBenchmark
{
    private const int Hidden = 256, Inter = 688, Layers = 4, Heads = 8, KvHeads = 2, Vocab = 1024, Tokens = 256;

    public static int Run(string[] args)
    {
        int reps = args.Length > 1 && int.TryParse(args[1], out int r) ? r : 5;
        string folder = WriteCheckpoint();
        try
        {
            int[] ids = [.. Enumerable.Range(0, Tokens).Select(i => (i * 37) % Vocab)];
            double after, afterFirst, before;
            float[] logitsAfter, logitsBefore;
            using (Device device = Device.Cpu())
            using (LlamaForCausalLM model = LlamaForCausalLM.LoadModel(device, folder))
            {
                (after, afterFirst, logitsAfter) = Time(reps, () => model.Forward(ids));
            }

            double? torch = TorchPeer(folder, Math.Max(reps, 10));
            if (args.Contains("--after-only"))
            {
                Console.WriteLine($"CPU schedules: {after:F3} s (first call {afterFirst:F3} s)");
                return 0;
            }

            using (Device device = Device.Cpu(2, 1, cpuSchedules: false))
            using (LlamaForCausalLM model = LlamaForCausalLM.LoadModel(device, folder))
            {
                (before, _, logitsBefore) = Time(1, () => model.Forward(ids), warm: false);
            }

            double maxDiff = logitsAfter.Zip(logitsBefore, (a, b) => Math.Abs(a - b)).Max();
            Console.WriteLine();
            Console.WriteLine($"Forward of {Tokens} tokens, small Llama (hidden {Hidden}, {Layers} layers, NF4 projections, f32 compute), {Environment.ProcessorCount} cores");
            Console.WriteLine("| schedule | time | tokens/s |");
            Console.WriteLine("| --- | ---: | ---: |");
            Console.WriteLine($"| GPU schedules on emulated warps (before) | {before:F3} s | {Tokens / before:F0} |");
            Console.WriteLine($"| CPU schedules (SIMD GEMM, barrier-free attention) | {after:F3} s | {Tokens / after:F0} |");
            Console.WriteLine($"| the same, first call (JIT, kernel compilation) | {afterFirst:F3} s | {Tokens / afterFirst:F0} |");
            Console.WriteLine(torch is double p
                ? $"| PyTorch, dense float32 weights (bench/cpu/torch_forward.py) | {p:F3} s | {Tokens / p:F0} |"
                : "| PyTorch | not run: apt-get install python3-torch libopenblas0-pthread | |");
            Console.WriteLine($"speed-up {before / after:F1}×; largest logit difference between the two {maxDiff:E2}");
            Console.WriteLine(new JsonObject
            {
                ["benchmark"] = "cpu-forward",
                ["tokens"] = Tokens,
                ["before_s"] = before,
                ["after_s"] = after,
                ["after_first_call_s"] = afterFirst,
                ["speedup"] = before / after,
                ["torch_s"] = torch,
                ["ours_over_torch"] = torch is double q ? after / q : null,
                ["max_logit_difference"] = maxDiff,
                ["processors"] = Environment.ProcessorCount,
            }.ToJsonString());
            return 0;
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }

    private static double? TorchPeer(string folder, int reps) =>
        PythonPeer.Run("torch_forward.py", null, folder, Environment.ProcessorCount, reps)?[0]!["seconds"]!.GetValue<double>();

    // The first call (JIT, kernel compilation, first touch of the buffers) timed on its own; then calls until the JIT
    // has tiered up (at least 2 s or 40 calls: methods are recompiled with profile data after ~30 calls), then the median.
    private static (double Seconds, double First, float[] Result) Time(int reps, Func<float[]> run, bool warm = true)
    {
        var clock = Stopwatch.StartNew();
        float[] result = run();
        double first = clock.Elapsed.TotalSeconds;
        for (int calls = 1; warm && calls < 40 && clock.Elapsed.TotalSeconds < 2; calls++)
        {
            result = run();
        }

        var times = new double[reps];
        for (int i = 0; i < reps; i++)
        {
            var sw = Stopwatch.StartNew();
            result = run();
            times[i] = sw.Elapsed.TotalSeconds;
        }

        Array.Sort(times);
        return (times[reps / 2], first, result);
    }

    internal static string WriteCheckpoint()
    {
        string dir = Directory.CreateTempSubdirectory("qlora-cpu-forward-").FullName;
        File.WriteAllText(Path.Combine(dir, "config.json"), $$"""
            {"model_type":"llama","hidden_size":{{Hidden}},"intermediate_size":{{Inter}},"num_hidden_layers":{{Layers}},"num_attention_heads":{{Heads}},
             "num_key_value_heads":{{KvHeads}},"vocab_size":{{Vocab}},"rms_norm_eps":1e-5,"rope_theta":10000.0,"max_position_embeddings":1024,"torch_dtype":"bfloat16"}
            """);
        var specs = new List<(SafeTensorSpec Spec, float Scale)>
        {
            (new("model.embed_tokens.weight", DType.BF16, [Vocab, Hidden]), 1f),
            (new("model.norm.weight", DType.BF16, [Hidden]), 0f),
            (new("lm_head.weight", DType.BF16, [Vocab, Hidden]), 0.06f),
        };
        int headDim = Hidden / Heads;
        for (int l = 0; l < Layers; l++)
        {
            string p = $"model.layers.{l}.";
            specs.Add((new(p + "input_layernorm.weight", DType.BF16, [Hidden]), 0f));
            specs.Add((new(p + "post_attention_layernorm.weight", DType.BF16, [Hidden]), 0f));
            specs.Add((new(p + "self_attn.q_proj.weight", DType.BF16, [Heads * headDim, Hidden]), 0.06f));
            specs.Add((new(p + "self_attn.k_proj.weight", DType.BF16, [KvHeads * headDim, Hidden]), 0.06f));
            specs.Add((new(p + "self_attn.v_proj.weight", DType.BF16, [KvHeads * headDim, Hidden]), 0.06f));
            specs.Add((new(p + "self_attn.o_proj.weight", DType.BF16, [Hidden, Heads * headDim]), 0.06f));
            specs.Add((new(p + "mlp.gate_proj.weight", DType.BF16, [Inter, Hidden]), 0.06f));
            specs.Add((new(p + "mlp.up_proj.weight", DType.BF16, [Inter, Hidden]), 0.06f));
            specs.Add((new(p + "mlp.down_proj.weight", DType.BF16, [Hidden, Inter]), 0.04f));
        }

        var rng = new Random(7);
        using var writer = new SafeTensorsWriter(Path.Combine(dir, "model.safetensors"), [.. specs.Select(s => s.Spec)]);
        foreach ((SafeTensorSpec spec, float scale) in specs)
        {
            // Norm weights are 1 (scale 0 marks them), the rest uniform in ±scale.
            var values = new BFloat16[spec.Shape.Aggregate(1L, (a, b) => a * b)];
            for (int i = 0; i < values.Length; i++)
            {
                values[i] = BFloat16.FromSingle(scale == 0f ? 1f : (float)(((rng.NextDouble() * 2) - 1) * scale));
            }

            writer.Write(spec.Name, MemoryMarshal.AsBytes(values.AsSpan()));
        }

        writer.Commit();
        return dir;
    }
}
