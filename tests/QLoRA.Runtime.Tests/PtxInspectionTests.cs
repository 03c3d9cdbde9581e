using System.Reflection;
using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Backends.EntryPoints;
using ILGPU.Backends.PTX;
using ILGPU.Runtime;
using ILGPU.Runtime.Cuda;
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
        using Context context = Context.Create(builder => builder.Default().EnableAlgorithms());
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
        // ILGPU addresses ArrayViews generically (ld/st without .global); the vector width is what matters.
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
    /// parameter whose PTX name starts with <paramref name="paramPrefix"/>: a forward taint over register operands,
    /// from <c>ld.param</c> of the parameter's first 8 bytes through arithmetic (not through loaded data).
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
            if (line.StartsWith('@'))
            {
                int guard = line.IndexOfAny([' ', '\t']);   // a predicate guard (@%p1 / @!%p1) does not change what is read
                if (guard < 0) continue;
                line = line[(guard + 1)..].TrimStart();
            }

            int space = line.IndexOfAny([' ', '\t']);
            if (space < 0) continue;
            string op = line[..space];
            string operands = line[(space + 1)..].Trim();
            if (op.StartsWith("ld.param", StringComparison.Ordinal))
            {
                // ld.param.b64 %rdN, [_packed_123]; (offset 0 is the pointer; +8 is the length)
                if (operands.Contains("[" + paramPrefix, StringComparison.Ordinal) && !operands.Contains('+'))
                    tainted.Add(register.Match(operands).Value);
                continue;
            }
            var regs = register.Matches(operands).Select(m => m.Value).ToList();
            if (regs.Count == 0) continue;
            if (op.StartsWith("ld.", StringComparison.Ordinal))
            {
                int bracket = operands.IndexOf('[');
                string address = bracket >= 0 ? register.Match(operands[bracket..]).Value : "";
                if (op.Contains(".v4.", StringComparison.Ordinal) && tainted.Contains(address)) return true;
                continue;   // loaded data is not an address derived from the parameter
            }
            if (op.StartsWith("st.", StringComparison.Ordinal) || op.StartsWith("bra", StringComparison.Ordinal)) continue;
            string dest = regs[0];
            if (regs.Skip(1).Any(tainted.Contains)) tainted.Add(dest);
        }
        return false;
    }

    [Theory]
    [InlineData(typeof(DenseOperand<Bf16Element>), typeof(DenseOperand<Bf16Element>), typeof(float), typeof(F32Element))]
    [InlineData(typeof(DenseOperand<F16Element>), typeof(FourBitOperand<F16Element, NestedAbsmaxSource>), typeof(ushort), typeof(F16Element))]
    public void TensorCoreGemmEmitsMmaSyncForBothHalfTypes(Type a, Type b, Type output, Type outputCodec)
    {
        MethodInfo gemm = typeof(MmaGemmKernels).GetMethod("Gemm", BindingFlags.Public | BindingFlags.Static)!.MakeGenericMethod(a, b, output, outputCodec);
        string ptx = Ptx(gemm);
        Assert.Contains("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32", ptx);
        Assert.Contains("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32", ptx);
        Assert.Equal(16, System.Text.RegularExpressions.Regex.Matches(ptx, @"\bmma\.sync").Count); // 2 × 4 slices per warp × two types
        Assert.Contains("bar.sync", ptx); // staged tiles
        // ILGPU hands each EmitRef operand to the asm through its own 4-byte local slot (ptxas promotes such scalar
        // slots to registers); anything larger would be a spilled array or struct.
        var locals = System.Text.RegularExpressions.Regex.Matches(ptx, @"\.local\s+\.align\s+\d+\s+\.b8\s+\w+\[(\d+)\]");
        Assert.NotEmpty(locals);
        Assert.All(locals, l => Assert.Equal("4", l.Groups[1].Value));
        Assert.True(locals.Count <= 16 * 14, $"{locals.Count} local slots: more than one per mma operand");
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
            ["TAbsmax"] = typeof(NestedAbsmaxSource), ["TA"] = typeof(DenseOperand<Bf16Element>), ["TB"] = typeof(FourBitOperand<Bf16Element, NestedAbsmaxSource>),
        };
        MethodInfo method = EntryPoints().Single(m => $"{m.DeclaringType!.Name}.{m.Name}" == name);
        if (method.IsGenericMethodDefinition)
        {
            method = method.MakeGenericMethod([.. method.GetGenericArguments().Select(g => arguments[g.Name])]);
        }

        Assert.Contains(".entry", Ptx(method));
    }
}
