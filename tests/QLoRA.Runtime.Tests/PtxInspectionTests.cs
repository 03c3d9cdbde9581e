using System.Reflection;
using ILGPU;
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
        using Context context = Context.Create(builder => builder.Default());
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
    }

    [Theory]
    [InlineData(typeof(float), typeof(F32Element))]
    [InlineData(typeof(ushort), typeof(Bf16Element))]
    [InlineData(typeof(ushort), typeof(F16Element))]
    public void GemvReadsPackedWeightsSixteenBytesAtATime(Type element, Type codec)
    {
        MethodInfo gemv = typeof(Nf4GemvKernels).GetMethod("Gemv", BindingFlags.Public | BindingFlags.Static)!.MakeGenericMethod(element, codec, typeof(NestedAbsmaxSource));
        string ptx = Ptx(gemv);
        Assert.Matches(@"\bld(\.global)?\.v4\.(b32|u32)", ptx);
        Assert.DoesNotContain(".local", ptx);
    }

    [Theory]
    [InlineData(typeof(Bf16Element), typeof(float), typeof(F32Element))]
    [InlineData(typeof(F16Element), typeof(ushort), typeof(F16Element))]
    public void TensorCoreGemmEmitsMmaSyncForBothHalfTypes(Type element, Type output, Type outputCodec)
    {
        MethodInfo gemm = typeof(MmaGemmKernels).GetMethod("Gemm", BindingFlags.Public | BindingFlags.Static)!.MakeGenericMethod(element, output, outputCodec);
        string ptx = Ptx(gemm);
        Assert.Contains("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32", ptx);
        Assert.Contains("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32", ptx);
        Assert.Equal(8, System.Text.RegularExpressions.Regex.Matches(ptx, @"\bmma\.sync").Count); // four n-slices × two types
        // ILGPU hands each EmitRef operand to the asm through its own 4-byte local slot (ptxas promotes such scalar
        // slots to registers); anything larger would be a spilled array or struct.
        var locals = System.Text.RegularExpressions.Regex.Matches(ptx, @"\.local\s+\.align\s+\d+\s+\.b8\s+\w+\[(\d+)\]");
        Assert.NotEmpty(locals);
        Assert.All(locals, l => Assert.Equal("4", l.Groups[1].Value));
        Assert.True(locals.Count <= 2 * 4 * 14, $"{locals.Count} local slots: more than one per mma operand");
    }
}
