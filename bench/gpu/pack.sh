#!/usr/bin/env bash
# Packs what the GPU run needs onto a Linux x86-64 machine that has an NVIDIA driver and no .NET: this machine's .NET
# runtime (compressed once, refreshed when the runtime changes), an env.sh that unpacks and activates it, and the
# published (framework-dependent) benchmark and test executables.
#
#   bench/gpu/pack.sh                 # the GPU benchmark and the runtime tests
#   bench/gpu/pack.sh A.csproj ...    # or the projects given
#
# Output: .gpu/ at the repository root (git-ignored). On the GPU machine: `. .gpu/env.sh && dotnet .gpu/<Name>/<Name>.dll`,
# or `bash bench/gpu/run-all.sh` for everything at once.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
dest="$repo/.gpu"
mkdir -p "$dest"

runtime_root=$(dirname "$(readlink -f "$(command -v dotnet)")")
archive="$dest/dotnet.tar.xz"
if [ ! -s "$archive" ] || [ -n "$(find "$runtime_root/shared/Microsoft.NETCore.App" -newer "$archive" -print -quit)" ]; then
  # Only the host and the shared framework: the SDK is not needed to run published apps.
  tar -C "$runtime_root" -cf - dotnet host shared/Microsoft.NETCore.App | xz -T0 -3 > "$archive.partial"
  mv "$archive.partial" "$archive"
fi

cat > "$dest/env.sh" <<'ENV'
# . .gpu/env.sh — unpacks the runtime once per machine and puts it, and the CUDA toolkit's libraries, on the paths.
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export DOTNET_ROOT=${QLORA_DOTNET_ROOT:-/tmp/qlora-dotnet}
[ -x "$DOTNET_ROOT/dotnet" ] || { mkdir -p "$DOTNET_ROOT" && tar -C "$DOTNET_ROOT" -xJf "$here/dotnet.tar.xz"; }
export PATH="$DOTNET_ROOT:$PATH" DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1
# GPU machines may lack ICU; the runtime does not need it (text tests that normalize Unicode do, and run on CI instead).
[ -e /usr/lib/x86_64-linux-gnu/libicuuc.so ] || ls /usr/lib/x86_64-linux-gnu/libicuuc.so.* >/dev/null 2>&1 || export DOTNET_SYSTEM_GLOBALIZATION_INVARIANT=1
for lib in /usr/local/cuda/targets/x86_64-linux/lib /usr/local/cuda-13.0/targets/x86_64-linux/lib /usr/local/cuda/lib64; do
  if [ -d "$lib" ]; then export LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"; break; fi
done
# cuBLAS: the toolkit's, else the one PyTorch's pip packages bring (nvidia-cublas), so GEMMs do not fall back silently.
cublas_found=0
lib_path=${LD_LIBRARY_PATH:-}   # run-all.sh sources this under set -u, and the variable may be unset
for d in ${lib_path//:/ }; do ls "$d"/libcublas.so.1[23] >/dev/null 2>&1 && cublas_found=1; done
ldconfig -p 2>/dev/null | grep -q 'libcublas\.so\.1[23]' && cublas_found=1
if [ "$cublas_found" = 0 ]; then
  d=$(python3 -c 'import os, nvidia.cublas as c; print(os.path.join(list(c.__path__)[0], "lib"))' 2>/dev/null)
  if [ -n "$d" ] && [ -d "$d" ]; then export LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"; fi
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "no NVIDIA GPU visible"
ENV

projects=("$@")
if [ ${#projects[@]} -eq 0 ]; then
  projects=("$repo/bench/QLoRA.Bench.Gpu/QLoRA.Bench.Gpu.csproj" "$repo/tests/QLoRA.Runtime.Tests/QLoRA.Runtime.Tests.csproj")
fi
for project in "${projects[@]}"; do
  name=$(basename "$project" .csproj)
  rm -rf "$dest/$name"
  dotnet publish "$project" -c Release -o "$dest/$name" --nologo -v quiet
done
echo ".gpu: $(du -sh "$dest" | cut -f1)"
