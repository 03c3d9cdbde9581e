namespace QLoRA.Runtime.Devices;

/// <summary>What executes the kernels.</summary>
public enum DeviceKind
{
    /// <summary>ILGPU's CPU accelerator (tests, CI, machines without a GPU).</summary>
    Cpu,
    /// <summary>An NVIDIA GPU through ILGPU's CUDA backend.</summary>
    Cuda,
}
