#!/usr/bin/python3
"""PyTorch peer for the CPU training-step benchmark: one LoRA step (r16 on all seven projections, α = r, no dropout) of the
small Llama read from the benchmark's checkpoint (dense float32 frozen base), 4 sequences × 256 tokens, causal within each
sequence, cross-entropy on the next token, backward, AdamW on the adapters. Needs Debian's python3-torch with
libopenblas0-pthread. Prints the median step time and the first step's loss as JSON.

usage: torch_train_step.py CHECKPOINT_DIR THREADS REPS
"""
import json
import math
import statistics
import sys
import time

import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
import checkpoint  # noqa: E402
import torch.nn.functional as F

folder, threads, reps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(threads)
torch.manual_seed(3)
config, weights = checkpoint.load(folder)

hidden, heads, kv = config["hidden_size"], config["num_attention_heads"], config["num_key_value_heads"]
d, eps, theta, vocab = hidden // heads, config["rms_norm_eps"], config["rope_theta"], config["vocab_size"]
S, T, R = 4, 256, 16
flat = [((i * 37) + (i // T * 11)) % vocab for i in range(S * T)]
ids = torch.tensor(flat).view(S, T)
labels = torch.tensor([flat[i + 1] if (i + 1) % T != 0 else -100 for i in range(S * T)]).view(S, T)
inv_freq = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
angles = torch.arange(T, dtype=torch.float32)[:, None] * inv_freq[None, :]
cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)
mask = torch.full((T, T), float("-inf")).triu(1)
projections = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
adapters = {}
for l in range(config["num_hidden_layers"]):
    for p in projections:
        w = weights[f"model.layers.{l}.{p}.weight"]
        bound = 1 / math.sqrt(w.shape[1])
        adapters[(l, p)] = (torch.empty(R, w.shape[1]).uniform_(-bound, bound).requires_grad_(), torch.zeros(w.shape[0], R, requires_grad=True))
optimizer = torch.optim.AdamW([t for pair in adapters.values() for t in pair], lr=1e-3, weight_decay=0.0)


def rms(x, w):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def rope(x):
    half = d // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], -1) * sin


def linear(x, l, p):
    a, b = adapters[(l, p)]
    return x @ weights[f"model.layers.{l}.{p}.weight"].t() + (x @ a.t()) @ b.t()


def step():
    optimizer.zero_grad()
    x = weights["model.embed_tokens.weight"][ids]
    for l in range(config["num_hidden_layers"]):
        pre = f"model.layers.{l}."
        h = rms(x, weights[pre + "input_layernorm.weight"])
        q = linear(h, l, "self_attn.q_proj").view(S, T, heads, d).transpose(1, 2)
        k = linear(h, l, "self_attn.k_proj").view(S, T, kv, d).transpose(1, 2)
        v = linear(h, l, "self_attn.v_proj").view(S, T, kv, d).transpose(1, 2)
        q, k = rope(q), rope(k)
        k, v = k.repeat_interleave(heads // kv, 1), v.repeat_interleave(heads // kv, 1)
        a = (((q @ k.transpose(-1, -2)) / d ** 0.5 + mask).softmax(-1) @ v).transpose(1, 2).reshape(S, T, hidden)
        x = x + linear(a, l, "self_attn.o_proj")
        h = rms(x, weights[pre + "post_attention_layernorm.weight"])
        x = x + linear(F.silu(linear(h, l, "mlp.gate_proj")) * linear(h, l, "mlp.up_proj"), l, "mlp.down_proj")
    logits = rms(x, weights["model.norm.weight"]) @ weights["lm_head.weight"].t()
    loss = F.cross_entropy(logits.view(-1, vocab), labels.view(-1), ignore_index=-100)
    loss.backward()
    optimizer.step()
    return loss.item()


first = step()
for _ in range(2):
    step()
times = []
for _ in range(reps):
    start = time.perf_counter()
    step()
    times.append(time.perf_counter() - start)
print(json.dumps({"seconds": statistics.median(times), "first_loss": first, "threads": torch.get_num_threads()}))
