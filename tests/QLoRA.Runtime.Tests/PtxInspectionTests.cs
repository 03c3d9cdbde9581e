using System.Reflection;
using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Backends.EntryPoints;
using ILGPU.Backends.PTX;
using ILGPU.Runtime;
using ILGPU.Runtime.Cuda;
using QLoRA.Runtime.Devices;
using QLoRA.Runtime.Kernels;

namespace QLoRA.Runtime.Tests;

/// <summary>
/// CUDA code paths compiled to PTX on a machine without a GPU (DESIGN.md §4) and inspected: the dequantize kernel must
/// move 16 bytes per load and per store, so it can approach copy bandwidth on the GPU.
/// </summary>
public class PtxInspectionTests
{
    private static string Ptx(MethodInfo kernel)
    {
        using Context context = Context.Create(builder => KernelCompilation.Configure(builder.Default())); // as a CUDA device compiles
        var backend = new PTXBackend(context, CudaArchitecture.SM_90, CudaInstructionSet.ISA_80, null!);
        var entry = EntryPointDescription.FromExplicitlyGroupedKernel(kernel);
        var compiled = (PTXCompiledKernel)backend.Compile(entry, default);
        return compiled.PTXAssembly;
    }

    private static MethodInfo Kernel(string name, Type absmax) =>
        typeof(DequantizeKernels).GetMethod(name, BindingFlags.Public | BindingFlags.Static)!.MakeGenericMethod(absmax);

    [Theory]
    [InlineData("ToBf16", typeof(PlainAbsmaxSource))]
    [InlineData("ToBf16", typeof(NestedAbsmaxSource))]
    [InlineData("ToF32", typeof(NestedAbsmaxSource))]
    public void DequantizeKernelsUseSixteenByteLoadsAndStores(string name, Type absmax)
    {
        string ptx = Ptx(Kernel(name, absmax));
        Assert.Contains(".target sm_", ptx);
        // O2's address-space inference makes these ld/st.global (generic at O1); the vector width is what matters.
        Assert.Matches(@"\bld(\.global)?\.v4\.(b32|u32)", ptx);
        Assert.Matches(@"\bst(\.global)?\.v4\.(b32|u32)", ptx);
        Assert.DoesNotContain(".local", ptx); // no spills to local memory
        Assert.Matches(@"\.shared\b", ptx); // the code table is staged in shared memory
    }

    [Theory]
    [InlineData(typeof(float), typeof(F32Element))]
    [InlineData(typeof(ushort), typeof(Bf16Element))]
    [InlineData(typeof(ushort), typeof(F16Element))]
    public void GemvReadsPackedWeightsSixteenBytesAtATime(Type element, Type codec)
    {
        MethodInfo gemv = typeof(Nf4GemvKernels).GetMethod("Gemv", BindingFlags.Public | BindingFlags.Static)!.MakeGenericMethod(element, codec, typeof(NestedAbsmaxSource));
        string ptx = Ptx(gemv);
        // Anchored to the parameter: some 16-byte load must read through the packed weights' pointer (the input x has
        // 16-byte loads of its own, which must not satisfy this check), and x is read 16 bytes at a time too.
        Assert.True(VectorLoadThrough(ptx, "_packed_"), "no ld.v4 reads an address derived from the packed weights");
        Assert.True(VectorLoadThrough(ptx, "_x_"), "no ld.v4 reads an address derived from the input x");
        Assert.False(VectorLoadThrough(ptx, "_table_"), "the code table is read from global memory 16 bytes at a time (it should be staged in shared memory)");
        Assert.DoesNotContain(".local", ptx);
    }

    /// <summary>
    /// Whether a 16-byte load (<c>ld[.global].v4</c>) reads an address computed from the pointer field of the kernel
    /// parameter whose PTX name starts with <paramref name="paramPrefix"/>: a forward taint over register operands in
    /// program order, from <c>ld.param</c> of the parameter's first 8 bytes through arithmetic (not through loaded
    /// data). A register written again by something untainted loses its taint: ILGPU's O2 output reuses one register
    /// for several parameters' pointers.
    /// </summary>
    internal static bool VectorLoadThrough(string ptx, string paramPrefix)
    {
        var tainted = new HashSet<string>(StringComparer.Ordinal);
        var register = new System.Text.RegularExpressions.Regex(@"%[a-z]+\d+");
        foreach (string raw in ptx.Split('\n'))
        {
            string line = raw.Trim();
            int semicolon = line.IndexOf(';');
            if (semicolon < 0 || line.StartsWith("//", StringComparison.Ordinal) || line.StartsWith('.')) continue;
            line = line[..semicolon];
            bool guarded = false;
            if (line.StartsWith('@'))
            {
                int guard = line.IndexOfAny([' ', '\t']);   // a predicate guard (@%p1 / @!%p1) does not change what is read
                if (guard < 0) continue;
                line = line[(guard + 1)..].TrimStart();
                guarded = true;
            }

            int space = line.IndexOfAny([' ', '\t']);
            if (space < 0) continue;
            string op = line[..space];
            string operands = line[(space + 1)..].Trim();
            var regs = register.Matches(operands).Select(m => m.Value).ToList();
            if (op.StartsWith("st.", StringComparison.Ordinal) || op.StartsWith("bra", StringComparison.Ordinal) || op.StartsWith("bar", StringComparison.Ordinal) || regs.Count == 0) continue;
            string dest = regs[0];
            bool taint;
            if (op.StartsWith("ld.param", StringComparison.Ordinal))
            {
                // ld.param.b64 %rdN, [_packed_123]; (offset 0 is the pointer; +8 is the length)
                taint = operands.Contains("[" + paramPrefix, StringComparison.Ordinal) && !operands.Contains('+');
            }
            else if (op.StartsWith("ld.", StringComparison.Ordinal))
            {
                int bracket = operands.IndexOf('[');
                string address = bracket >= 0 ? register.Match(operands[bracket..]).Value : "";
                if (op.Contains(".v4.", StringComparison.Ordinal) && tainted.Contains(address)) return true;
                taint = false;   // loaded data is not an address derived from the parameter
            }
            else
            {
                taint = regs.Skip(1).Any(tainted.Contains);
            }

            if (taint)
            {
                tainted.Add(dest);
            }
            else if (!guarded)
            {
                tainted.Remove(dest);   // overwritten (a guarded write may not happen: keep what it had)
            }
        }
        return false;
    }

    [Theory]
    [InlineData(typeof(DenseOperand<Bf16Element>), typeof(DenseOperand<Bf16Element>), typeof(float), typeof(F32Element), typeof(Bf16Element), "bf16")]
    [InlineData(typeof(DenseOperand<F16Element>), typeof(FourBitOperand<F16Element, NestedAbsmaxSource>), typeof(ushort), typeof(F16Element), typeof(F16Element), "f16")]
    public void TensorCoreGemmEmitsOneKindOfMmaSyncPerInstantiation(Type a, Type b, Type output, Type outputCodec, Type half, string ptxType)
    {
        MethodInfo gemm = typeof(MmaGemmKernels).GetMethod("Gemm", BindingFlags.Public | BindingFlags.Static)!.MakeGenericMethod(a, b, output, outputCodec, half);
        string ptx = Ptx(gemm);
        Assert.Contains($"mma.sync.aligned.m16n8k16.row.col.f32.{ptxType}.{ptxType}.f32", ptx);
        Assert.Equal(8, System.Text.RegularExpressions.Regex.Matches(ptx, @"\bmma\.sync").Count); // 2 × 4 slices per warp, one type
        Assert.Contains("bar.sync", ptx); // staged tiles
        // ILGPU hands each EmitRef operand to the asm through its own 4-byte local slot, which ptxas promotes to a
        // register only when no branch separates the slot's stores and loads (PtxasTests checks the machine code).
        var locals = System.Text.RegularExpressions.Regex.Matches(ptx, @"\.local\s+\.align\s+\d+\s+\.b8\s+\w+\[(\d+)\]");
        Assert.NotEmpty(locals);
        Assert.All(locals, l => Assert.Equal("4", l.Groups[1].Value));
        Assert.True(locals.Count <= 8 * 14, $"{locals.Count} local slots: more than one per mma operand");
    }

    [Theory]
    [InlineData("Forward")]
    [InlineData("BackwardQuery")]
    [InlineData("BackwardKeyValue")]
    public void AttentionKernelsCompileForCudaWithSharedTilesAndBarriers(string name)
    {
        MethodInfo kernel = typeof(AttentionKernels).GetMethod(name, BindingFlags.Public | BindingFlags.Static)!.MakeGenericMethod(typeof(ushort), typeof(Bf16Element));
        string ptx = Ptx(kernel);
        Assert.Contains(".shared", ptx);   // the dynamic tile
        Assert.Contains("bar.sync", ptx);  // group barriers around each tile
    }

    // Every kernel entry point (public static void methods of the *Kernels classes), instantiated for bf16 activations:
    // each must compile for CUDA. Math functions (exp, log, sin, cos) need ILGPU.Algorithms' intrinsics, which a plain
    // context lacks; this is what catches that without a GPU.
    public static TheoryData<string> KernelEntryPoints()
    {
        var data = new TheoryData<string>();
        foreach (MethodInfo m in EntryPoints())
        {
            data.Add($"{m.DeclaringType!.Name}.{m.Name}");
        }

        return data;
    }

    private static IEnumerable<MethodInfo> EntryPoints() =>
        typeof(DequantizeKernels).Assembly.GetTypes()
            .Where(t => t.Namespace == "QLoRA.Runtime.Kernels" && t.Name.EndsWith("Kernels", StringComparison.Ordinal))
            .SelectMany(t => t.GetMethods(BindingFlags.Public | BindingFlags.Static))
            .Where(m => m.ReturnType == typeof(void));

    [Theory]
    [MemberData(nameof(KernelEntryPoints))]
    public void EveryKernelCompilesForCuda(string name)
    {
        var arguments = new Dictionary<string, Type>
        {
            ["T"] = typeof(ushort), ["TE"] = typeof(Bf16Element), ["TC"] = typeof(float), ["TCE"] = typeof(F32Element),
            ["TIn"] = typeof(float), ["TInE"] = typeof(F32Element), ["TOut"] = typeof(ushort), ["TOutE"] = typeof(F16Element),
            ["TAbsmax"] = typeof(NestedAbsmaxSource), ["TH"] = typeof(Bf16Element), ["TA"] = typeof(DenseOperand<Bf16Element>), ["TB"] = typeof(FourBitOperand<Bf16Element, NestedAbsmaxSource>),
        };
        MethodInfo method = EntryPoints().Single(m => $"{m.DeclaringType!.Name}.{m.Name}" == name);
        if (method.IsGenericMethodDefinition)
        {
            method = method.MakeGenericMethod([.. method.GetGenericArguments().Select(g => arguments[g.Name])]);
        }

        Assert.Contains(".entry", Ptx(method));
    }
}
