using ILGPU;

namespace QLoRA.Runtime.Kernels;

/// <summary>The 16-entry 4-bit code table staged in shared memory, where every lookup is one conflict-free access.</summary>
internal static class CodeTable
{
    /// <summary>Copies <paramref name="table"/> into this group's shared memory; every thread of the group must call it.</summary>
    public static ArrayView<float> ToShared(ArrayView<float> table)
    {
        ArrayView<float> shared = SharedMemory.Allocate<float>(16);
        for (int i = Group.IdxX; i < 16; i += Group.DimX)
        {
            shared[i] = table[i];
        }

        Group.Barrier();
        return shared;
    }
}
