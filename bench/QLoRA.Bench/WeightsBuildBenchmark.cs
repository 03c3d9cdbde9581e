using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Text.Json;
using QLoRA.Build.Tasks;
using QLoRA.Core;
using QLoRA.Core.Numerics;
using QLoRA.Core.Quantization;
using QLoRA.Core.SafeTensors;

namespace QLoRA.Bench;

/// <summary>
/// Build-time quantization, measured end to end: QuantizeWeights' work on a synthetic Llama-shaped bf16 checkpoint
/// (GB/s of input) next to a parallel read pass over the same files in the same run, and the time a no-op
/// `dotnet build` takes with and without a QLoRAWeights item. Prints a table and one JSON record.
/// </summary>
internal static class WeightsBuildBenchmark
{
    public static int Run(string[] args)
    {
        int layers = args.Length > 1 && int.TryParse(args[1], out int l) ? l : 8;
        string work = Environment.GetEnvironmentVariable("QLORA_BENCH_DIR") is { Length: > 0 } keep ? Directory.CreateDirectory(keep).FullName : Directory.CreateTempSubdirectory("qlora-bench-").FullName;
        try
        {
            string weights = Path.Combine(work, "weights", "llama");
            long bytes = WriteCheckpoint(weights, layers);
            Console.WriteLine($"synthetic checkpoint: {layers} layers, {bytes / 1e9:F2} GB bf16 in {weights}");

            double read = Median(3, () => ReadPass(weights));
            var job = new WeightsJob([Path.Combine(weights, "model.safetensors")], Path.Combine(weights, "config.json"), "llama", Path.Combine(work, "out"), QuantizationOptions.Default, ["lm_head", "embed_tokens"]);
            // The first run in a process pays for JIT compilation, as a fresh MSBuild node does; the median of the next
            // five is the steady state (a long-lived node, or the next model of the same build).
            double cold = Time(() => new WeightsQuantizer(_ => { }).Run(job));
            double quantize = Median(5, () => Time(() => new WeightsQuantizer(_ => { }).Run(job)));

            string withWeights = Project(work, "with", "<QLoRAWeights Include=\"../weights/llama/*.safetensors\" Config=\"../weights/llama/config.json\" OutputName=\"llama\" />");
            string without = Project(work, "without", "");
            Build(withWeights);
            Build(without);
            double noOpWith = Median(3, () => Time(() => Build(withWeights)));
            double noOpWithout = Median(3, () => Time(() => Build(without)));

            double gb = bytes / 1e9;
            Console.WriteLine();
            Console.WriteLine("| what | time | GB/s of bf16 input | share of read pass |");
            Console.WriteLine("| --- | ---: | ---: | ---: |");
            Console.WriteLine($"| read pass (mmap, parallel) | {read:F3} s | {gb / read:F2} | 100% |");
            Console.WriteLine($"| QuantizeWeights (NF4 + DQ, XXH3-128, write) | {quantize:F3} s | {gb / quantize:F2} | {100 * read / quantize:F1}% |");
            Console.WriteLine($"| QuantizeWeights, first run in the process | {cold:F3} s | {gb / cold:F2} | {100 * read / cold:F1}% |");
            Console.WriteLine($"| no-op dotnet build, with QLoRAWeights | {noOpWith:F3} s | | |");
            Console.WriteLine($"| no-op dotnet build, without | {noOpWithout:F3} s | | added {noOpWith - noOpWithout:F3} s |");
            Console.WriteLine(JsonSerializer.Serialize(new
            {
                benchmark = "weights-build",
                input_bytes = bytes,
                layers,
                read_gbps = gb / read,
                quantize_gbps = gb / quantize,
                quantize_share_of_read = read / quantize,
                quantize_cold_gbps = gb / cold,
                noop_build_with_s = noOpWith,
                noop_build_without_s = noOpWithout,
                processors = Environment.ProcessorCount,
            }));
            return 0;
        }
        finally
        {
            if (Environment.GetEnvironmentVariable("QLORA_BENCH_DIR") is not { Length: > 0 })
            {
                Directory.Delete(work, recursive: true);
            }
        }
    }

    private static long WriteCheckpoint(string folder, int layers)
    {
        const int hidden = 2048, inter = 8192, heads = 32, kvHeads = 8, vocab = 32000;
        Directory.CreateDirectory(folder);
        File.WriteAllText(Path.Combine(folder, "config.json"), $$"""
            {"model_type": "llama", "hidden_size": {{hidden}}, "intermediate_size": {{inter}}, "num_hidden_layers": {{layers}},
             "num_attention_heads": {{heads}}, "num_key_value_heads": {{kvHeads}}, "vocab_size": {{vocab}}, "torch_dtype": "bfloat16"}
            """);
        var specs = new List<SafeTensorSpec>
        {
            new("model.embed_tokens.weight", DType.BF16, [vocab, hidden]),
            new("model.norm.weight", DType.BF16, [hidden]),
            new("lm_head.weight", DType.BF16, [vocab, hidden]),
        };
        for (int i = 0; i < layers; i++)
        {
            string p = $"model.layers.{i}.";
            specs.Add(new(p + "input_layernorm.weight", DType.BF16, [hidden]));
            specs.Add(new(p + "post_attention_layernorm.weight", DType.BF16, [hidden]));
            specs.Add(new(p + "self_attn.q_proj.weight", DType.BF16, [hidden, hidden]));
            specs.Add(new(p + "self_attn.k_proj.weight", DType.BF16, [hidden / 4, hidden]));
            specs.Add(new(p + "self_attn.v_proj.weight", DType.BF16, [hidden / 4, hidden]));
            specs.Add(new(p + "self_attn.o_proj.weight", DType.BF16, [hidden, hidden]));
            specs.Add(new(p + "mlp.gate_proj.weight", DType.BF16, [inter, hidden]));
            specs.Add(new(p + "mlp.up_proj.weight", DType.BF16, [inter, hidden]));
            specs.Add(new(p + "mlp.down_proj.weight", DType.BF16, [hidden, inter]));
        }

        // One random buffer, reused with a per-tensor shift so tensors differ without generating gigabytes of randomness.
        var pool = new BFloat16[1 << 22];
        var rng = new Random(1);
        for (int i = 0; i < pool.Length; i++)
        {
            pool[i] = BFloat16.FromSingle((float)((rng.NextDouble() - 0.5) * 0.05));
        }

        byte[] poolBytes = MemoryMarshal.AsBytes(pool.AsSpan()).ToArray();
        using var writer = new SafeTensorsWriter(Path.Combine(folder, "model.safetensors"), specs);
        long total = 0;
        int shift = 0;
        foreach (SafeTensorSpec spec in specs)
        {
            long remaining = spec.ByteLength;
            total += remaining;
            int offset = (shift++ * 4098) % (poolBytes.Length / 2);
            while (remaining > 0)
            {
                int n = (int)Math.Min(remaining, poolBytes.Length - offset);
                writer.Write(spec.Name, poolBytes.AsSpan(offset, n));
                remaining -= n;
                offset = 0;
            }
        }

        writer.Commit();
        return total;
    }

    private static double ReadPass(string folder)
    {
        var sw = Stopwatch.StartNew();
        using SafeTensorsFile file = SafeTensorsFile.Open(Path.Combine(folder, "model.safetensors"));
        var sums = new ulong[file.Tensors.Count];
        Parallel.For(0, file.Tensors.Count, t =>
        {
            SafeTensorInfo info = file.Tensors[t];
            Vector256<ulong> acc = Vector256<ulong>.Zero;
            for (long offset = 0; offset < info.ByteLength; offset += 1 << 24)
            {
                ReadOnlySpan<ulong> words = MemoryMarshal.Cast<byte, ulong>(file.GetBytes(info.Name, offset, (int)Math.Min(1 << 24, info.ByteLength - offset)));
                for (int i = 0; i <= words.Length - 4; i += 4)
                {
                    acc += Vector256.Create(words.Slice(i, 4));
                }
            }

            sums[t] = Vector256.Sum(acc);
        });
        return sw.Elapsed.TotalSeconds;
    }

    private static string Project(string work, string name, string item)
    {
        string dir = Path.Combine(work, name);
        Directory.CreateDirectory(dir);
        string build = Path.Combine(AppContext.BaseDirectory, "build");
        File.WriteAllText(Path.Combine(dir, name + ".csproj"), $"""
            <Project Sdk="Microsoft.NET.Sdk">
              <Import Project="{build}/QLoRA.Build.Tasks.props" />
              <PropertyGroup><TargetFramework>net10.0</TargetFramework><QLoRATasksAssembly>{Path.Combine(AppContext.BaseDirectory, "QLoRA.Build.Tasks.dll")}</QLoRATasksAssembly></PropertyGroup>
              <ItemGroup>{item}</ItemGroup>
              <Import Project="{build}/QLoRA.Build.Tasks.targets" />
            </Project>
            """);
        File.WriteAllText(Path.Combine(dir, "Class1.cs"), "public static class Marker { }");
        return dir;
    }

    private static void Build(string dir)
    {
        var start = new ProcessStartInfo("dotnet", ["build", "-nologo", "-v:q", "-nodeReuse:false"]) { WorkingDirectory = dir, RedirectStandardOutput = true };
        start.Environment["MSBUILDDISABLENODEREUSE"] = "1";
        using Process p = Process.Start(start)!;
        string output = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        if (p.ExitCode != 0)
        {
            throw new InvalidOperationException(output);
        }
    }

    private static double Time(Action action)
    {
        var sw = Stopwatch.StartNew();
        action();
        return sw.Elapsed.TotalSeconds;
    }

    private static double Median(int runs, Func<double> measure)
    {
        double[] times = [.. Enumerable.Range(0, runs).Select(_ => measure()).Order()];
        return times[runs / 2];
    }
}
