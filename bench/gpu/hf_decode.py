#!/usr/bin/env python3
"""The peer of `QLoRA.Bench.Gpu decode`: HF transformers bf16 greedy decoding with a static KV cache and
torch.compile on the same shapes and GPU.

Random-initialized LlamaForCausalLM in bfloat16 (llama-1b / llama-8b shapes, vocab 128256), prompts of 16 random ids,
generate(max_new_tokens=N, min_new_tokens=N, do_sample=False, cache_implementation="static") with the forward compiled
(mode "reduce-overhead": CUDA graphs). Decode tokens/s per batch from the difference of an N-token and a 1-token run
(prefill and setup cancel), prefill tokens/s of one long prompt. Prints a table and one JSON record.
  python3 bench/gpu/hf_decode.py [--shape 1b|8b] [--batch 1,8,64] [--tokens 128] [--prefill 2048] [--no-compile]
"""
import argparse, json, time

import torch
from random_llama import SHAPES, random_llama



def timed(fn):
    torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - start


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--shape", default="8b", choices=SHAPES)
    p.add_argument("--batch", default="1,8,64")
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--prefill", type=int, default=2048)
    p.add_argument("--no-compile", action="store_true")
    a = p.parse_args()
    model = random_llama(a.shape).eval()
    compiled = dict(forward=None)  # the eager forward while the compiled one is in use
    if not a.no_compile:
        compiled["forward"] = model.forward
        model.forward = torch.compile(model.forward, mode="reduce-overhead", fullgraph=True)
    rows = []
    print(f"device: {torch.cuda.get_device_name()}; HF transformers bf16, static cache, torch.compile {'off' if a.no_compile else 'on'}")
    print("| decode | batch | tokens/s | step |")
    print("| --- | ---: | ---: | ---: |")
    for batch in [int(b) for b in a.batch.split(",")]:
        ids = torch.randint(0, model.config.vocab_size, (batch, 16), device="cuda")

        def run(n):
            with torch.no_grad():
                model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, cache_implementation="static", pad_token_id=0)

        try:
            run(a.tokens)  # warm: compile and capture
        except Exception as e:  # a torch/transformers pairing whose compiled generate fails: measure eager, say so
            if compiled["forward"] is None:
                raise
            print(f"torch.compile failed ({type(e).__name__}: {str(e)[:200]}); measuring the eager forward")
            model.forward, compiled["forward"] = compiled["forward"], None
            run(a.tokens)
        run(a.tokens)
        one = timed(lambda: run(1))
        full = timed(lambda: run(a.tokens))
        step = (full - one) / (a.tokens - 1)
        rows.append(dict(batch=batch, tokens_per_s=batch / step, step_s=step))
        print(f"| decode | {batch} | {batch / step:.0f} | {step * 1000:.2f} ms |")
        # A record per row as it is measured: a run cut short by its time limit still leaves the rows it finished.
        print(json.dumps(dict(benchmark="hf-decode-row", shape=a.shape, compiled=compiled["forward"] is not None, **rows[-1])))
    prompt = torch.randint(0, model.config.vocab_size, (1, a.prefill), device="cuda")
    with torch.no_grad():
        model(prompt)
        seconds = timed(lambda: model(prompt))
    print(f"| prefill | 1 x {a.prefill} | {a.prefill / seconds:.0f} | |")
    print(json.dumps(dict(benchmark="hf-decode", device=torch.cuda.get_device_name(), shape=a.shape, compiled=compiled["forward"] is not None,
                          decode=rows, prefill_tokens=a.prefill, prefill_tokens_per_s=a.prefill / seconds)))


if __name__ == "__main__":
    main()
