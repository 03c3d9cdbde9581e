#!/usr/bin/env python3
"""Logits parity of QLoRA.Sdk's LlamaForCausalLM against transformers' LlamaForCausalLM on the same random checkpoint.

Run on a machine with PyTorch + transformers and the packed .NET runtime (see docs/gpu.md):
    bench/gpu/pack.sh
    . .gpu/env.sh && python3 tests/interop/llama_parity.py
It writes a tiny random Llama (bf16) with save_pretrained, runs our model through the benchmark app's `logits` command
(which quantizes the projections to NF4 on load, as QLoRA does), and compares with transformers running the same
NF4-dequantized weights in float32. Prints the max abs and relative error and exits non-zero above the bf16 tolerance.
"""
import json, os, subprocess, sys, tempfile

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM

NF4 = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635, -0.18477343022823334,
       -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
       0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0]


def nf4_roundtrip(w: torch.Tensor, block: int = 64) -> torch.Tensor:
    """Quantize/dequantize like bitsandbytes (absmax per 64, nearest code by float32 midpoints; no double quant, so
    the absmax-rounding of our double quantization makes the comparison slightly looser)."""
    flat = w.float().flatten()
    pad = (-flat.numel()) % block
    blocks = torch.nn.functional.pad(flat, (0, pad)).view(-1, block)
    absmax = blocks.abs().amax(dim=1, keepdim=True)
    scaled = blocks * (1.0 / absmax.clamp_min(1e-30))
    code = torch.tensor(NF4)
    mids = (code[1:] + code[:-1]) / 2
    idx = torch.bucketize(scaled, mids, right=False)
    return (code[idx] * absmax).flatten()[: flat.numel()].view_as(w)


def main() -> int:
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=8,
                         num_key_value_heads=4, vocab_size=1000, rms_norm_eps=1e-5, max_position_embeddings=256,
                         tie_word_embeddings=False, torch_dtype="bfloat16")
    model = LlamaForCausalLM(config).to(torch.bfloat16).eval()
    folder = tempfile.mkdtemp(prefix="qlora-parity-")
    model.save_pretrained(folder, safe_serialization=True)
    ids = [1, 17, 256, 999, 42, 7, 7, 300]
    out = os.path.join(folder, "ours.f32")
    exe = os.environ.get("QLORA_BENCH", ".gpu/QLoRA.Bench.Gpu/QLoRA.Bench.Gpu.dll")
    subprocess.run(["dotnet", exe, "logits", folder, out] + [str(i) for i in ids], check=True)
    ours = np.fromfile(out, dtype=np.float32).reshape(len(ids), config.vocab_size)

    reference = LlamaForCausalLM(config).float().eval()
    state = {k: v.float() for k, v in model.state_dict().items()}
    for name, tensor in state.items():
        if name.endswith("_proj.weight"):
            state[name] = nf4_roundtrip(tensor)
    reference.load_state_dict(state)
    with torch.no_grad():
        theirs = reference(torch.tensor([ids])).logits[0].numpy()
    err = np.abs(ours - theirs).max()
    rel = err / np.abs(theirs).max()
    print(json.dumps({"max_abs_error": float(err), "max_rel_error": float(rel), "tokens": len(ids)}))
    return 0 if rel < 2e-2 else 1


if __name__ == "__main__":
    sys.exit(main())
