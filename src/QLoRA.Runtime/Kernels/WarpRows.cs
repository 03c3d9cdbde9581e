using ILGPU;

namespace QLoRA.Runtime.Kernels;

/// <summary>
/// Grid-stride over rows with one warp per row: this thread's warp's first row and the number of warps in the grid, in
/// 32-bit arithmetic computed once. (Dividing a 64-bit thread index by the warp size on every iteration compiled to a
/// call of the GPU's 64-bit division subroutine.) Warps are aligned in the grid and groups hold whole warps, so a
/// warp's lanes share every row and leave the loop together, as warp shuffles need.
/// </summary>
internal static class WarpRows
{
    /// <summary>The row this thread's warp takes first.</summary>
    public static int First => Grid.GlobalIndex.X / Warp.WarpSize;

    /// <summary>Rows between one of this warp's rows and its next: the warps in the grid.</summary>
    public static int Stride => Grid.DimX * (Group.DimX / Warp.WarpSize);
}
