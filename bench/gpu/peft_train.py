#!/usr/bin/env python3
"""The peer of `QLoRA.Bench.Gpu train`: HF transformers + PEFT bf16 LoRA training on the same shapes and GPU.

Random-initialized LlamaForCausalLM in bfloat16 (llama-1b: hidden 2048, 16 layers; llama-8b: hidden 4096, 32 layers;
vocab 128256), LoRA r16 alpha 32 dropout 0 on every linear layer but lm_head, torch AdamW on the adapters, gradient
checkpointing on, batch x seq random ids; tokens/s over timed steps after a warmup step and
torch.cuda.max_memory_allocated. Prints a table and one JSON record.
  python3 bench/gpu/peft_train.py [--shape 1b|8b] [--batch 1|4] [--seq 2048] [--steps 5] [--no-checkpointing]
"""
import argparse, json, time

import torch
from peft import LoraConfig, get_peft_model
from random_llama import SHAPES, random_llama



def main():
    p = argparse.ArgumentParser()
    p.add_argument("--shape", default="1b", choices=SHAPES)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--no-checkpointing", action="store_true")
    a = p.parse_args()
    model = random_llama(a.shape)
    if not a.no_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"))
    optimizer = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=2e-4)
    ids = torch.randint(0, model.config.vocab_size, (a.batch, a.seq), device="cuda")

    def step():
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_([q for q in model.parameters() if q.requires_grad], 0.3)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    step()  # warmup
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(a.steps):
        loss = step()
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / a.steps
    peak = torch.cuda.max_memory_allocated()
    tokens = a.batch * a.seq / seconds
    print(f"| HF transformers + PEFT bf16 LoRA, llama-{a.shape}, batch {a.batch} x seq {a.seq}, checkpointing {'off' if a.no_checkpointing else 'on'} | value |")
    print("| --- | ---: |")
    print(f"| step | {seconds * 1000:.1f} ms |")
    print(f"| tokens/s | {tokens:.0f} |")
    print(f"| peak memory (torch.cuda.max_memory_allocated) | {peak / 2**30:.2f} GiB |")
    print(json.dumps({"benchmark": "peft-train", "device": torch.cuda.get_device_name(), "shape": a.shape, "batch": a.batch, "seq": a.seq,
                      "checkpointing": not a.no_checkpointing, "step_s": seconds, "tokens_per_s": tokens, "peak_bytes": peak, "loss": float(loss)}))


if __name__ == "__main__":
    main()
