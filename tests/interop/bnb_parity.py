#!/usr/bin/env python3
"""Bit-level interop with bitsandbytes: our NF4 + double-quantized files against bitsandbytes' own quantizer.

Needs a CUDA machine with PyTorch and bitsandbytes, and the packed .NET runtime (see docs/gpu.md):
    bench/gpu/pack.sh
    . .gpu/env.sh && python3 tests/interop/bnb_parity.py
1. Writes random bf16 weights, has QLoRA.Sdk quantize them (bitsandbytes layout), loads our file with
   bitsandbytes' QuantState.from_dict and dequantizes with bitsandbytes: must equal our own dequantization path's
   expectations (no NaN, max error within NF4 resolution) and bnb's quantization of the same weights bit for bit
   (packed codes, absmax codes, nested absmax; the nested offset may differ in the last bit: bnb's mean is a float32
   reduction, ours a double sum).
Exit code 0 on parity; prints a JSON summary either way.
"""
import json, os, subprocess, sys, tempfile

import torch
from safetensors.torch import load_file, save_file

try:
    import bitsandbytes.functional as F
except ImportError:
    print(json.dumps({"skipped": "bitsandbytes is not installed"}))
    sys.exit(0)


def main() -> int:
    torch.manual_seed(0)
    folder = tempfile.mkdtemp(prefix="qlora-bnb-")
    weights = {f"layer{i}.weight": (torch.randn(256, 512) * 0.02).to(torch.bfloat16) for i in range(3)}
    src, ours_path = os.path.join(folder, "in.safetensors"), os.path.join(folder, "ours.safetensors")
    save_file(weights, src)
    exe = os.environ.get("QLORA_BENCH", ".gpu/QLoRA.Bench.Gpu/QLoRA.Bench.Gpu.dll")
    subprocess.run(["dotnet", exe, "quantize", src, ours_path], check=True)
    ours = load_file(ours_path)
    report = {}
    ok = True
    for name, w in weights.items():
        packed_ref, state_ref = F.quantize_4bit(w.cuda(), blocksize=64, compress_statistics=True, quant_type="nf4")
        prefix = name
        qs = {k[len(prefix) + 1:]: v.cuda() for k, v in ours.items() if k.startswith(prefix + ".")}
        state = F.QuantState.from_dict(qs, device=torch.device("cuda"))
        ours_packed = ours[name].cuda()
        deq_ours = F.dequantize_4bit(ours_packed, state)
        deq_ref = F.dequantize_4bit(packed_ref, state_ref)
        same_codes = bool(torch.equal(ours_packed.flatten(), packed_ref.flatten()))
        same_absmax_codes = bool(torch.equal(state.absmax.flatten(), state_ref.absmax.flatten()))
        max_diff = float((deq_ours.float() - deq_ref.float()).abs().max())
        report[name] = {"codes_identical": same_codes, "absmax_codes_identical": same_absmax_codes,
                        "offset_ours": float(state.offset), "offset_bnb": float(state_ref.offset),
                        "max_dequant_diff": max_diff, "nan": bool(torch.isnan(deq_ours).any())}
        ok &= same_codes and not report[name]["nan"] and max_diff <= 1e-3
    print(json.dumps(report, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
