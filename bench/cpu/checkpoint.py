"""Shared by the PyTorch peers: the benchmark's checkpoint (config.json + one bf16 model.safetensors) as float32 tensors."""
import json
import struct

import torch


def load(folder):
    """Returns (config, {name: float32 tensor})."""
    config = json.load(open(f"{folder}/config.json"))
    with open(f"{folder}/model.safetensors", "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    weights = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        raw = torch.frombuffer(bytearray(data[start:end]), dtype=torch.int16)
        # bf16 -> f32: the 16 bits are the high half of the float32.
        weights[name] = (raw.to(torch.int32) << 16).view(torch.float32).reshape(info["shape"])
    return config, weights
