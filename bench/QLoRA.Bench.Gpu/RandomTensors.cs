using QLoRA.Core;
using QLoRA.Runtime.Tensors;
using Device = QLoRA.Runtime.Devices.Device;

namespace QLoRA.Bench.Gpu;

/// <summary>Random device tensors of benchmark shapes, generated straight in their dtype (no float32 copy of large weights).</summary>
internal static class RandomTensors
{
    public static DeviceTensor Create(Device device, DType dtype, double scale, int seed, params long[] shape)
    {
        long count = shape.Aggregate(1L, (a, b) => a * b);
        var rng = new Random(seed);
        if (dtype == DType.F32)
        {
            var values = new float[count];
            for (long i = 0; i < count; i++)
            {
                values[i] = (float)(((rng.NextDouble() * 2) - 1) * scale);
            }

            return DeviceTensor.FromHost<float>(device, values, dtype, shape);
        }

        var bits = new ushort[count];
        for (long i = 0; i < count; i++)
        {
            float v = (float)(((rng.NextDouble() * 2) - 1) * scale);
            bits[i] = dtype == DType.F16 ? BitConverter.HalfToUInt16Bits((Half)v) : (ushort)(BitConverter.SingleToUInt32Bits(v) >> 16);
        }

        return DeviceTensor.FromHost<ushort>(device, bits, dtype, shape);
    }
}
