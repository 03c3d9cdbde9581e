#!/usr/bin/env bash
# Fetches NVIDIA's PTX assembler (ptxas, CUDA 11.8, from Debian's non-free nvidia-cuda-toolkit package; no GPU needed)
# into a cache outside the repository, checked by sha256. The runtime tests assemble every kernel the engine loads with
# it for sm_90, so PTX the driver would reject, register spills and local-memory operands show up on a machine without
# a GPU. Only ptxas is kept (19 MB); nothing is installed.
# Usage: tests/tools/fetch-ptxas.sh [CACHE_DIR]   (default: $QLORA_PTXAS_CACHE or ~/.cache/qlora-ptxas); prints ptxas's path.
set -euo pipefail
cache="${1:-${QLORA_PTXAS_CACHE:-$HOME/.cache/qlora-ptxas}}"
version=11.8.89~11.8.0-5~deb12u1
sha=d1156026e704fe0368b6295db06224ed00a727966fb13454f34e3f3102db0457
if [ -x "$cache/ptxas" ] && [ -f "$cache/.ok" ]; then echo "$cache/ptxas"; exit 0; fi
mkdir -p "$cache"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The package is in Debian's non-free component, which the default sources leave out: a private sources list names it.
mkdir -p "$work/lists/partial" "$work/archives/partial"
cat > "$work/nonfree.sources" <<SOURCES
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: non-free
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
apt_opts=(-o Dir::Etc::SourceList=/dev/null -o Dir::Etc::SourceParts="$work" -o Dir::State::Lists="$work/lists"
  -o Dir::Cache::Archives="$work/archives" -o Debug::NoLocking=1 -o APT::Sandbox::User=root)
apt-get "${apt_opts[@]}" update -qq >/dev/null
(cd "$work" && apt-get "${apt_opts[@]}" download -qq "nvidia-cuda-toolkit=$version" >/dev/null 2>&1)
deb=$(ls "$work"/nvidia-cuda-toolkit_*.deb)
echo "$sha  $deb" | sha256sum -c --quiet - || { echo "sha256 mismatch for $deb" >&2; exit 1; }
dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$work" ./usr/bin/ptxas
mv "$work/usr/bin/ptxas" "$cache/ptxas.tmp" && mv "$cache/ptxas.tmp" "$cache/ptxas"
reported=$("$cache/ptxas" --version)
case $reported in *"release 11.8"*) touch "$cache/.ok" ;; *) echo "ptxas reports an unexpected version: $reported" >&2; exit 1 ;; esac
echo "$cache/ptxas"
