#!/usr/bin/env python3
"""Adapter interop with PEFT, both ways, on one random Llama checkpoint written by transformers.

Needs PyTorch, transformers and peft (the GPU machine has them) and the packed .NET runtime (bench/gpu/pack.sh):
    . .gpu/env.sh && python3 tests/interop/peft_parity.py
1. transformers writes a small random Llama (bf16 safetensors; norms random too, so their weights count).
2. PEFT -> us: PEFT makes a LoRA adapter with random A and B (init_lora_weights=False; rsLoRA, a rank_pattern and an
   alpha_pattern, so every scaling rule is exercised) and saves it; we load the folder and must give PEFT's logits.
3. us -> PEFT: we train an adapter for a few steps and save it in PEFT's format; PeftModel.from_pretrained loads it,
   its lora_B must equal the file's (a key PEFT did not match would stay at its init silently) and it must give our logits.
Both sides compute in float32 from the same bf16 weights (our projections kept dense: --dense), so the logits agree to
float32 rounding: the tolerance is 1e-4 of the largest |logit| (about 1,700 float32 units; 2 layers, K <= 352).
PyTorch runs on the CPU (no TF32); ours on whatever device the runtime picks (the GPU there).
Exit code 0 on parity; prints one JSON record either way.
"""
import json, os, subprocess, sys, tempfile

import numpy as np
import torch
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM
from peft import LoraConfig, PeftModel, get_peft_model

EXE = os.environ.get("QLORA_BENCH_GPU", os.path.join(".gpu", "QLoRA.Bench.Gpu", "QLoRA.Bench.Gpu.dll"))
TOLERANCE = 1e-4
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def ours(*args):
    env = {**os.environ, "QLORA_COMPUTE_DTYPE": os.environ.get("QLORA_COMPUTE_DTYPE", "f32")}
    done = subprocess.run(["dotnet", EXE, *map(str, args)], env=env, capture_output=True, text=True)
    print(done.stdout.strip())
    if done.returncode != 0:
        print(done.stderr, file=sys.stderr)
        raise SystemExit(f"QLoRA.Bench.Gpu {args[0]} exited {done.returncode}")


def our_logits(folder, base, ids, adapter=None):
    out = os.path.join(folder, "ours.f32")
    ours("logits", base, out, "--dense", *(["--adapter", adapter] if adapter else []), *ids)
    return np.fromfile(out, dtype=np.float32).reshape(len(ids), -1)


def their_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


def fresh_base(base):
    # Loaded as saved (bf16), then widened: float32 values equal to the bf16 weights, exactly what --dense loads.
    return LlamaForCausalLM.from_pretrained(base).float().eval()


def compare(name, mine, theirs):
    error = float(np.abs(mine - theirs).max() / max(1.0, np.abs(theirs).max()))
    same_argmax = bool((mine.argmax(-1) == theirs.argmax(-1)).all())
    ok = error <= TOLERANCE and mine.shape == theirs.shape
    print(f"{'ok  ' if ok else 'FAIL'} {name}: max |ours - theirs| / max |logit| = {error:.2e} (tolerance {TOLERANCE:.0e}), argmax equal: {same_argmax}")
    return dict(check=name, ok=ok, relative_error=error, argmax_equal=same_argmax)


def main():
    torch.manual_seed(0)
    folder = tempfile.mkdtemp(prefix="qlora-peft-")
    base, theirs_dir, ours_dir = (os.path.join(folder, n) for n in ("base", "peft-adapter", "our-adapter"))
    config = LlamaConfig(vocab_size=320, hidden_size=128, intermediate_size=352, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5, tie_word_embeddings=False,
                         initializer_range=0.08)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    model.to(torch.bfloat16).save_pretrained(base)
    ids = [int(i) for i in torch.randint(0, config.vocab_size, (24,))]
    checks = [compare("base model", our_logits(folder, base, ids), their_logits(fresh_base(base), ids))]

    # PEFT -> us.
    peft_config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=TARGETS, init_lora_weights=False,
                             use_rslora=True, rank_pattern={"down_proj": 4}, alpha_pattern={"v_proj": 24})
    peft_model = get_peft_model(fresh_base(base), peft_config).eval()
    peft_model.save_pretrained(theirs_dir)
    checks.append(compare("PEFT's adapter loaded by us", our_logits(folder, base, ids, theirs_dir), their_logits(peft_model, ids)))

    # us -> PEFT.
    ours("train-adapter", base, ours_dir, "--dense", "--steps", 3, "--rank", 8)
    loaded = PeftModel.from_pretrained(fresh_base(base), ours_dir).eval()
    saved = load_file(os.path.join(ours_dir, "adapter_model.safetensors"))
    state = loaded.state_dict()
    mismatched = [key for key, value in saved.items()
                  if not any(k.endswith(key.replace(".weight", ".default.weight")) and torch.equal(v.float(), value.float())
                             for k, v in state.items() if "lora_" in k)]
    keys_ok = not mismatched and any(v.abs().max() > 0 for k, v in saved.items() if "lora_B" in k)
    print(f"{'ok  ' if keys_ok else 'FAIL'} our adapter's {len(saved)} tensors are PEFT's loaded values{'' if keys_ok else f' (not matched: {mismatched[:4]})'}")
    checks.append(dict(check="our adapter's tensors loaded by PEFT", ok=keys_ok, tensors=len(saved), mismatched=mismatched[:8]))
    checks.append(compare("our adapter loaded by PEFT", our_logits(folder, base, ids, ours_dir), their_logits(loaded, ids)))

    ok = all(c["ok"] for c in checks)
    import peft, transformers
    print(json.dumps(dict(benchmark="peft-parity", ok=ok, transformers=transformers.__version__, peft=peft.__version__,
                          torch=torch.__version__, checks=checks)))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
