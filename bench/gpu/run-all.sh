#!/usr/bin/env bash
# Everything that needs the GPU, in one device call (the machine keeps nothing between calls):
#   bench/gpu/pack.sh
#   device: carry [".gpu"], command "bash bench/gpu/run-all.sh"
# Runs the runtime test executable (its CUDA-only tests: cuBLAS, tensor-core GEMMs), the benchmark (table + JSON) and
# the interop parity scripts; each output goes to $OUT (or ./gpu-out) and its tail to the console.
set -u
. .gpu/env.sh
out=${OUT:-gpu-out}
mkdir -p "$out"

step() {
  local name=$1; shift
  echo "== $name: $*"
  "$@" > "$out/$name.txt" 2>&1
  echo "== $name exited $?"
  tail -n "${TAIL:-25}" "$out/$name.txt"
}

step tests dotnet .gpu/QLoRA.Runtime.Tests/QLoRA.Runtime.Tests.dll
# Generation next to HF transformers bf16 + static cache + torch.compile (DESIGN target: llama-8b batch 1 >= 550 tokens/s on H200).
TAIL=14 step decode_8b dotnet .gpu/QLoRA.Bench.Gpu/QLoRA.Bench.Gpu.dll decode --shape 8b --batch 1,8,64
TAIL=8 step hf_decode_8b python3 bench/gpu/hf_decode.py --shape 8b --batch 1,8,64
TAIL=14 step decode_1b dotnet .gpu/QLoRA.Bench.Gpu/QLoRA.Bench.Gpu.dll decode --shape 1b --batch 1,8,64
TAIL=8 step hf_decode_1b python3 bench/gpu/hf_decode.py --shape 1b --batch 1,8,64
TAIL=45 step bench dotnet .gpu/QLoRA.Bench.Gpu/QLoRA.Bench.Gpu.dll
QLORA_COMPUTE_DTYPE=f32 step llama_parity python3 tests/interop/llama_parity.py
step bnb_parity python3 tests/interop/bnb_parity.py
# QLoRA training next to HF transformers + PEFT bf16 LoRA on the same shapes (DESIGN target: 2x their tokens/s, <= 40% of their memory).
step train_1b_b1 dotnet .gpu/QLoRA.Bench.Gpu/QLoRA.Bench.Gpu.dll train --shape 1b --batch 1
step peft_1b_b1 python3 bench/gpu/peft_train.py --shape 1b --batch 1
step train_1b_b4 dotnet .gpu/QLoRA.Bench.Gpu/QLoRA.Bench.Gpu.dll train --shape 1b --batch 4
step peft_1b_b4 python3 bench/gpu/peft_train.py --shape 1b --batch 4

