namespace QLoRA.Runtime.Devices;

/// <summary>The device that was asked for (by argument or QLORA_DEVICE) does not exist on this machine.</summary>
public sealed class DeviceNotAvailableException(string message) : InvalidOperationException(message);
