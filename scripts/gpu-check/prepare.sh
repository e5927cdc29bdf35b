#!/usr/bin/env bash
# Prepares the GPU check here, so that the GPU machine builds nothing (run.sh says what it runs):
# the `cuda` fav binary (scripts/build-cuda.sh) and the `cuda` test binary of the golden vectors
# and SANA fixtures (trainer/tests/device.rs), stripped and compressed, the shared golden file,
# and the Python packages the GPU machine's PyTorch image lacks (diffusers, open_clip and their
# small needs), all in target/gpu-check — what `run` carries (64 MiB with the working tree):
#
#   scripts/gpu-check/prepare.sh
#   run(command="bash scripts/gpu-check/run.sh", carry=["target/gpu-check"], timeout_s=560)
#
# A dry run of the same files on this machine's CPU: FAV_CHECK_DEVICE=cpu FAV_CHECK_SIZE=8
# bash scripts/gpu-check/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
./scripts/build-cuda.sh
export CUDARC_CUDA_VERSION="${CUDARC_CUDA_VERSION:-12080}"
export CARGO_TARGET_DIR="${FAV_CUDA_TARGET:-target/cuda}"
unset DOCS_RS
G=target/gpu-check
rm -rf "$G" && mkdir -p "$G"
strip -o "$G/fav" "$CARGO_TARGET_DIR/release/fav"
xz -T0 -9e "$G/fav"
echo "== the device test binary"
bin=$(cargo test --release -p fav-trainer --features cuda --test device --no-run 2>&1 |
  sed -n 's/.*Executable tests\/device.rs (\(.*\))/\1/p' | tail -1)
[ -x "$bin" ] || { echo "no device test binary built" >&2; exit 1; }
strip -o "$G/device" "$bin"
xz -T0 -9e "$G/device"
golden=../shared/testdata/svgd_golden.json
[ -f "$golden" ] || { echo "$golden not found (the shared golden vectors)" >&2; exit 1; }
xz -c "$golden" >"$G/svgd_golden.json.xz"
# The GPU machine's image has torch, numpy, safetensors, huggingface_hub, peft, timm, regex and
# torchvision (its python3 is 3.12); these are what it lacks, pinned to the versions the fixtures
# were made with, installed here into one folder (diffusers without its pipelines: only the
# models are used) and packed.
site=$(mktemp -d)
trap 'rm -rf "$site"' EXIT
python3 -m pip install -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --target "$site" \
  diffusers==0.42.1 open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4 importlib_metadata==10.2.0
find "$site/diffusers/pipelines" -mindepth 1 -maxdepth 1 ! -name __init__.py ! -name pipeline_utils.py \
  ! -name pipeline_loading_utils.py ! -name onnx_utils.py -exec rm -rf {} +
find "$site/diffusers/modular_pipelines" -mindepth 1 -maxdepth 1 ! -name __init__.py -exec rm -rf {} +
rm -rf "$site/bin"
tar -C "$site" -cJf "$G/python.tar.xz" --exclude=__pycache__ .
du -ab "$G" | sort -n | tail -8
tree=$(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1)
total=$(($(du -sb "$G" | cut -f1) + tree))
echo "== $G with the working tree: $((total / 1048576)) MiB to send (limit 64)"
[ "$total" -le $((64 * 1048576)) ] || { echo "over the 64 MiB a run sends" >&2; exit 1; }
