#!/usr/bin/python3
"""PyTorch peer for the CPU forward benchmark: the same small Llama (dense float32 weights read from the benchmark's
checkpoint), 256 tokens, median seconds per forward. Needs Debian's python3-torch with libopenblas0-pthread.

usage: torch_forward.py CHECKPOINT_DIR THREADS REPS
"""
import json
import statistics
import sys
import time

import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
import checkpoint  # noqa: E402
import torch.nn.functional as F

folder, threads, reps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(threads)
config, weights = checkpoint.load(folder)

hidden, heads, kv = config["hidden_size"], config["num_attention_heads"], config["num_key_value_heads"]
d, eps, theta = hidden // heads, config["rms_norm_eps"], config["rope_theta"]
T = 256
ids = torch.tensor([(i * 37) % config["vocab_size"] for i in range(T)])
inv_freq = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
angles = torch.arange(T, dtype=torch.float32)[:, None] * inv_freq[None, :]
cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)
mask = torch.full((T, T), float("-inf")).triu(1)


def rms(x, w):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def rope(x):  # [heads, T, d]
    half = d // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], -1)
    return x * cos + rotated * sin


def forward():
    with torch.no_grad():
        x = weights["model.embed_tokens.weight"][ids]
        for l in range(config["num_hidden_layers"]):
            p = f"model.layers.{l}."
            h = rms(x, weights[p + "input_layernorm.weight"])
            q = (h @ weights[p + "self_attn.q_proj.weight"].t()).view(T, heads, d).transpose(0, 1)
            k = (h @ weights[p + "self_attn.k_proj.weight"].t()).view(T, kv, d).transpose(0, 1)
            v = (h @ weights[p + "self_attn.v_proj.weight"].t()).view(T, kv, d).transpose(0, 1)
            q, k = rope(q), rope(k)
            k = k.repeat_interleave(heads // kv, 0)
            v = v.repeat_interleave(heads // kv, 0)
            scores = (q @ k.transpose(-1, -2)) / d ** 0.5 + mask  # torch 1.13 has no scaled_dot_product_attention
            a = (scores.softmax(-1) @ v).transpose(0, 1).reshape(T, hidden)
            x = x + a @ weights[p + "self_attn.o_proj.weight"].t()
            h = rms(x, weights[p + "post_attention_layernorm.weight"])
            g = h @ weights[p + "mlp.gate_proj.weight"].t()
            u = h @ weights[p + "mlp.up_proj.weight"].t()
            x = x + (F.silu(g) * u) @ weights[p + "mlp.down_proj.weight"].t()
        return rms(x, weights["model.norm.weight"]) @ weights["lm_head.weight"].t()


for _ in range(3):
    forward()
times = []
for _ in range(reps):
    start = time.perf_counter()
    forward()
    times.append(time.perf_counter() - start)
print(json.dumps({"seconds": statistics.median(times), "threads": torch.get_num_threads()}))
