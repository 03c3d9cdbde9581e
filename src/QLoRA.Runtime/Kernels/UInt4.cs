using System.Runtime.InteropServices;

namespace QLoRA.Runtime.Kernels;

/// <summary>16 bytes moved as one vector load or store (ILGPU emits ld/st.global.v4.b32 for it).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct UInt4
{
    /// <summary>Bytes 0..3.</summary>
    public uint X;
    /// <summary>Bytes 4..7.</summary>
    public uint Y;
    /// <summary>Bytes 8..11.</summary>
    public uint Z;
    /// <summary>Bytes 12..15.</summary>
    public uint W;
}
