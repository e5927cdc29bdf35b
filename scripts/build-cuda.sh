#!/usr/bin/env bash
# Builds the `fav` binary with the `cuda` feature, offline, on Debian (as CI and a fresh machine
# have it): burn-cuda -> cubecl-cuda -> cubecl-llvm links LLVM statically, and its bundler
# (tracel-llvm-bundler) downloads an LLVM archive unless a marker says one is installed. We point
# it at Debian's LLVM 22 instead (all the LLVM C functions cubecl-llvm calls exist there).
#
#   scripts/build-cuda.sh [extra cargo features, e.g. nccl]
#
# Output: target/cuda/release/fav, and target/cuda/fav.xz (stripped, compressed: ~27 MB, for
# copying to a GPU machine). CUDA itself is not needed to build: cudarc loads libcuda (and NCCL)
# when the binary runs. Environment:
#   CUDARC_CUDA_VERSION  driver API the bindings target (default 12080: runs on any driver of
#                        CUDA 12.8 or newer, 13.x included; the `nccl` feature pins 12.8 too)
#   FAV_CUDA_TARGET      cargo target directory (default target/cuda: the CPU build in
#                        target/release is left alone, its burn features differ)
set -euo pipefail
cd "$(dirname "$0")/.."

LLVM=22
need=()
for p in "llvm-$LLVM-dev" "libpolly-$LLVM-dev" libzstd-dev; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
command -v xz >/dev/null || need+=(xz-utils)
command -v strip >/dev/null || need+=(binutils)
# NCCL ranks are bootstrapped over MPI: the `nccl` (and `mpi`) builds link OpenMPI through bindgen.
if [[ " $* " == *" nccl "* || " $* " == *" mpi "* ]]; then
  for p in libopenmpi-dev libclang-dev clang; do dpkg -s "$p" >/dev/null 2>&1 || need+=("$p"); done
fi
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "== installing ${need[*]}"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}"
  else
    echo "missing system packages: ${need[*]} (apt-get install them, then rerun)" >&2
    exit 1
  fi
fi

# The bundler's install directory is named after its version: read it from Cargo.lock.
V=$(grep -A1 '^name = "tracel-llvm-bundler"$' Cargo.lock | sed -n 's/^version = "\(.*\)"$/\1/p')
[ -n "$V" ] || { echo "tracel-llvm-bundler not found in Cargo.lock" >&2; exit 1; }
P="${XDG_DATA_HOME:-$HOME/.local/share}/tracel/tracel-llvm-$V"
mkdir -p "$P/bin"
# Written only when it changes: cubecl-llvm's build script reruns (and all above it rebuilds) when
# the file is touched.
cat >"$P/bin/llvm-config.new" <<SH
#!/bin/sh
# Stand-in for tracel's bundled LLVM (written by fav's scripts/build-cuda.sh): Debian's LLVM $LLVM.
# Debian prints system libraries as full .so paths; the bundler expects -lname.
/usr/lib/llvm-$LLVM/bin/llvm-config "\$@" | sed 's#/[^ ]*/lib\([A-Za-z0-9_+-]*\)\.so#-l\1#g'
SH
if cmp -s "$P/bin/llvm-config.new" "$P/bin/llvm-config"; then
  rm "$P/bin/llvm-config.new"
else
  mv "$P/bin/llvm-config.new" "$P/bin/llvm-config"
  chmod +x "$P/bin/llvm-config"
fi
[ -e "$P/.tracel-llvm-installed" ] || touch "$P/.tracel-llvm-installed"

features=cuda
for f in "$@"; do features="$features,$f"; done
export CUDARC_CUDA_VERSION="${CUDARC_CUDA_VERSION:-12080}"
export CARGO_TARGET_DIR="${FAV_CUDA_TARGET:-target/cuda}"
unset DOCS_RS # it makes the build scripts skip LLVM: the link would fail
echo "== cargo build --release -p fav-launch --features $features (CUDA API $CUDARC_CUDA_VERSION, LLVM $LLVM)"
cargo build --release -p fav-launch --features "$features"

bin="$CARGO_TARGET_DIR/release/fav"
strip -o "$CARGO_TARGET_DIR/fav.stripped" "$bin"
xz -T0 -6 -c "$CARGO_TARGET_DIR/fav.stripped" >"$CARGO_TARGET_DIR/fav.xz"
rm "$CARGO_TARGET_DIR/fav.stripped"
echo "== $bin ($(du -h "$bin" | cut -f1)); compressed: $CARGO_TARGET_DIR/fav.xz ($(du -h "$CARGO_TARGET_DIR/fav.xz" | cut -f1))"
