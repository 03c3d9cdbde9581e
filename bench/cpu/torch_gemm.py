#!/usr/bin/python3
"""PyTorch peer for the CPU GEMM benchmark: the same shapes and layouts, float32, median seconds per product.

Needs Debian's python3-torch with an optimized BLAS: apt-get install python3-torch libopenblas0-pthread
(without libopenblas0-pthread torch falls back to the reference BLAS, ~2.7 GFLOP/s). Reads the shapes as JSON on stdin,
prints one JSON object per shape.
"""
import json
import statistics
import sys
import time

import torch

torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else torch.get_num_threads())
for case in json.load(sys.stdin):
    m, n, k, ta, tb = case["m"], case["n"], case["k"], case["transpose_a"], case["transpose_b"]
    g = torch.Generator().manual_seed(1)
    a = torch.rand((k, m) if ta else (m, k), generator=g) * 2 - 1
    b = torch.rand((n, k) if tb else (k, n), generator=g) * 2 - 1
    opa = a.t() if ta else a
    opb = b.t() if tb else b
    out = torch.empty(m, n)
    for _ in range(3):
        torch.matmul(opa, opb, out=out)
    times = []
    for _ in range(case["reps"]):
        start = time.perf_counter()
        torch.matmul(opa, opb, out=out)
        times.append(time.perf_counter() - start)
    print(json.dumps({"name": case["name"], "seconds": statistics.median(times), "threads": torch.get_num_threads()}), flush=True)
