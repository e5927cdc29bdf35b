#!/usr/bin/env bash
# The GPU check, run on a GPU machine from the repository root with what prepare.sh made here
# (target/gpu-check: the `cuda` fav binary and test binary, compressed, the golden file and the
# Python packages the PyTorch side lacks there). It builds nothing. In one call, under a deadline:
#   1. the golden vectors and the SANA-Sprint fixtures on the GPU (the `device` test binary), with
#      PyTorch's own error on that fixture there in float32 and in TF32, a GPU that cannot be
#      opened refused with a clear error, and `fav sample` there against diffusers' images;
#   2. the tiny t2i FAV step: `fav bench` on the GPU against the same step in diffusers/PyTorch;
#   3. the step of a SANA-Sprint 0.6B-shaped model (random weights, 1024² latents, K particles of
#      one prompt) in fav and in PyTorch, with gradient checkpointing: time, images/s and peak
#      GPU memory;
#   4. a short toy job on the GPU against the same job on the CPU (same base, final weights), and
#      again on the GPU (same bits?);
#   5. the 0.6B step again without checkpointing (peak memory);
#   6. a step too big for the GPU: a clear error, not a panic.
# Everything lands as JSON under $OUT (gpu-check.json sums it up) with each part's log.
#
#   run(command="FAV_CHECK_DEADLINE=480 bash scripts/gpu-check/run.sh", carry=["target/gpu-check"],
#       timeout_s=560)
#
# FAV_CHECK_DEVICE=cpu runs the same binaries on the CPU (BURN_DEVICE=flex): a dry run on any
# machine. FAV_CHECK_DEADLINE (seconds, default 500) bounds the whole; a part that would pass it
# is cut and says so. FAV_CHECK_K (default 4) particles in the 0.6B step, FAV_CHECK_SIZE (default
# 32: 1024²) its latent side.
set -uo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
G=$root/target/gpu-check
OUT=${OUT:-/tmp/fav-gpu-check}
mkdir -p "$OUT"
W=$(mktemp -d)
start=$(date +%s)
deadline=$((start + ${FAV_CHECK_DEADLINE:-500}))
dev=${FAV_CHECK_DEVICE:-cuda}
K=${FAV_CHECK_K:-4}
export PYTHONUNBUFFERED=1 RUST_BACKTRACE=1

note() { echo "== [$(($(date +%s) - start)) s] $*" | tee -a "$OUT/progress.log"; }
# `part NAME MAX_SECONDS CMD...`: run CMD with its output in $OUT/NAME.log, cut at MAX_SECONDS or
# at the deadline; its exit status and seconds in $OUT/parts.jsonl.
part() {
  local name=$1 max=$2
  shift 2
  local left=$((deadline - $(date +%s)))
  [ "$left" -lt "$max" ] && max=$left
  if [ "$max" -le 5 ]; then
    note "$name: skipped (deadline)"
    echo "{\"part\": \"$name\", \"status\": \"skipped: deadline\"}" >>"$OUT/parts.jsonl"
    return 1
  fi
  note "$name (at most $max s)"
  local t0=$(date +%s)
  # The command may be one of this script's functions: run it in a bash that has them.
  timeout -k 5 "$max" bash -c '"$@"' _ "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  local status=ok
  [ $rc -eq 124 ] || [ $rc -eq 137 ] && status="cut after $max s"
  [ $rc -ne 0 ] && [ "$status" = ok ] && status="failed (exit $rc)"
  echo "{\"part\": \"$name\", \"status\": \"$status\", \"seconds\": $(($(date +%s) - t0))}" >>"$OUT/parts.jsonl"
  note "$name: $status"
  tail -3 "$OUT/$name.log"
  return $rc
}

# Peak GPU memory of a command, polled with nvidia-smi every 100 ms (MiB; the whole GPU, so run
# one thing at a time): `with_memory NAME CMD...` writes $OUT/NAME.mem.
with_memory() {
  local name=$1
  shift
  if command -v nvidia-smi >/dev/null && [ "$dev" = cuda ]; then
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 >"$W/$name.mem" 2>/dev/null &
    local poll=$!
    "$@"
    local rc=$?
    kill $poll 2>/dev/null
    wait $poll 2>/dev/null
    sort -n "$W/$name.mem" | tail -1 >"$OUT/$name.mem"
    return $rc
  fi
  "$@"
}

note "unpacking"
for b in fav device; do xz -dc "$G/$b.xz" >"$W/$b" && chmod +x "$W/$b"; done
xz -dc "$G/svgd_golden.json.xz" >"$W/svgd_golden.json"
mkdir -p "$W/site" && tar -C "$W/site" -xJf "$G/python.tar.xz"
export PYTHONPATH=$W/site${PYTHONPATH:+:$PYTHONPATH}
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  python3 -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__)" 2>&1 | tail -1
  # What the PyTorch parts import, the pack's and the machine's own: a missing one names itself
  # here instead of failing a part later.
  python3 -c "import importlib.util as u; print('missing Python modules:', [m for m in \
    ('torch', 'diffusers', 'peft', 'open_clip', 'safetensors', 'numpy') if u.find_spec(m) is None] or 'none')"
  nproc
} >"$OUT/machine.txt"
cat "$OUT/machine.txt"

if [ "$dev" = cuda ]; then
  fav_dev=cuda
else
  export BURN_DEVICE=flex
  fav_dev=cpu
fi
fav() { "$W/fav" "$@"; }
export -f fav with_memory note
export W OUT dev start
clip=$root/trainer/tests/data/clip
tiny=(examples/sana-sprint-tiny.toml --set device=\"$fav_dev\")

# 1. Golden vectors (the shared file, then this crate's stress cases) and the SANA fixtures.
# --nocapture keeps each comparison's error in the log, passed or not.
FAV_TRAINER_DIR=$root/trainer SVGD_GOLDEN=$W/svgd_golden.json part tests 120 "$W/device" --test-threads 1 --nocapture
FAV_TRAINER_DIR=$root/trainer SVGD_GOLDEN=$root/trainer/tests/data/svgd_stress.json \
  part tests-stress 60 "$W/device" --test-threads 1 --nocapture golden::
# PyTorch's own error on the SANA fixture on this device, TF32 off and on: what to read the
# fixture errors above against where burn-cuda's float32 products ran in TF32.
part tf32-torch 45 python3 scripts/gpu-check/torch_tf32.py --device "$dev"

# A GPU that cannot be opened (none visible; an index past the last) ends `fav train` with an
# error naming it, before the run directory is made — not a panic in burn-cuda's runtime.
refusals() {
  local case rc
  for case in no-visible-gpu index-past-last; do
    if [ $case = no-visible-gpu ]; then
      CUDA_VISIBLE_DEVICES= fav train --set device=\"cuda\" --set steps=1 --out "$W/refused" >"$W/$case.txt" 2>&1
    else
      fav train --set device=\"cuda:64\" --set steps=1 --out "$W/refused" >"$W/$case.txt" 2>&1
    fi
    rc=$?
    python3 scripts/gpu-check/judge.py $case "$W/$case.txt" $rc 'device = "cuda" (GPU' >>"$OUT/refusals.jsonl"
  done
  ! grep -q '"ok": false' "$OUT/refusals.jsonl" && [ ! -e "$W/refused" ]
}
export -f refusals
part refusals 30 refusals

# `fav sample --device` on the GPU: the tiny SANA-Sprint pipeline from diffusers' own noise (4
# steps and the decoder), against diffusers' images (float32 on the CPU: 2e-5 of scale).
sample_run() {
  local sana=$root/trainer/tests/data/sana
  mkdir -p "$W/pipe" && ln -sfn "$sana/transformer" "$W/pipe/transformer" && ln -sfn "$sana/dc_ae_interpolate/vae" "$W/pipe/vae"
  fav sample --device "$fav_dev" --steps 4 --model "$W/pipe" --embeddings "$sana/prompts.safetensors" \
    --noise "$sana/sample_noise.safetensors" --out "$W/sample" &&
    python3 scripts/gpu-check/compare.py "$W/sample/images.safetensors" "$sana/sample_expected.safetensors" \
      >"$OUT/sample.json"
}
export -f sample_run
export root fav_dev
part sample 30 sample_run

# 2. The tiny t2i step: fav (its JSON) against PyTorch (one JSON line), K = 4, one pass.
part tiny-fav 60 with_memory tiny-fav fav bench "${tiny[@]}" --set fav.conditions=1 --set t2i.micro_batch=4 \
  --runs 10 --field-n 256 --field-d 64 --json "$OUT/tiny-fav.json"
part tiny-torch 45 with_memory tiny-torch python3 scripts/gpu-check/torch_step.py --device "$dev" \
  --pipeline examples/tiny-t2i/pipeline --embeddings examples/tiny-t2i/embeddings.safetensors \
  --clip-pt "$clip/open_clip_tiny.pt" --clip-json "$clip/open_clip_tiny.json" --k 4 --micro 4 \
  --rank 4 --alpha 4 --beta 100 --runs 10 --warmup 3 --bf16 $([ "$dev" = cuda ] && echo 1 || echo 0) --ckpt 0

# 3. SANA-Sprint 0.6B-shaped, 1024² latents: K particles of one prompt, micro-batch 1 (spec
# §11.1), tiny reward tower; with checkpointing (time and memory), then the toy job, then without
# checkpointing (memory) — in this order so the deadline cuts the least needed first.
big=$W/sana06
part make-0.6b 90 python3 scripts/gpu-check/make_pipeline.py "$big" --model 0.6b --sample-size "${FAV_CHECK_SIZE:-32}"
big_step() {
  local ckpt=$1 fav_max=$2 torch_max=$3
  part "0.6b-fav-ckpt-$ckpt" "$fav_max" with_memory "0.6b-fav-ckpt-$ckpt" fav bench "${tiny[@]}" \
    --set fav.batch=$K --set fav.conditions=1 --set t2i.micro_batch=1 --set t2i.gradient_checkpointing=$ckpt \
    --set t2i.decoder_checkpointing=$ckpt --set t2i.lora_rank=32 --set t2i.lora_alpha=32.0 \
    --set t2i.model=\"$big/pipeline\" --set t2i.embeddings=\"$big/embeddings.safetensors\" \
    --set t2i.train_prompts=\"$big/train.txt\" --set t2i.eval_prompts=\"$big/eval.txt\" --warmup 1 --runs 2 \
    --field-n 256 --field-d 64 --json "$OUT/0.6b-fav-ckpt-$ckpt.json"
  part "0.6b-torch-ckpt-$ckpt" "$torch_max" with_memory "0.6b-torch-ckpt-$ckpt" python3 scripts/gpu-check/torch_step.py \
    --device "$dev" --pipeline "$big/pipeline" --embeddings "$big/embeddings.safetensors" \
    --clip-pt "$clip/open_clip_tiny.pt" --clip-json "$clip/open_clip_tiny.json" --k "$K" --micro 1 \
    --runs 2 --warmup 1 --bf16 $([ "$dev" = cuda ] && echo 1 || echo 0) --ckpt $([ "$ckpt" = true ] && echo 1 || echo 0)
}
big_step true 120 60

# 4. The toy job: a short pretraining on the CPU (cached), then the same 20 steps on the CPU and
# twice on the device from that base; final weights compared (device against CPU, and the two
# device runs: same config and seed, same bits?).
toy_run() {
  local toy=(--set steps=20 --set pretrain.steps=300 --set eval.every=20 --set checkpoint.every=0
    --set pretrain.cache_dir=\"$W/cache\" --resume none)
  fav train "${toy[@]}" --set device=\"cpu\" --out "$W/toy-cpu" || return
  local base
  base=$(ls "$W"/cache/*.safetensors)
  # Each comparison as soon as its runs are done: a cut part keeps what it finished.
  fav train "${toy[@]}" --set device=\"$fav_dev\" --set model.base=\"$base\" --out "$W/toy-dev" &&
    python3 scripts/gpu-check/compare.py "$W/toy-cpu/final.safetensors" "$W/toy-dev/final.safetensors" >"$OUT/toy.json" &&
    fav train "${toy[@]}" --set device=\"$fav_dev\" --set model.base=\"$base\" --out "$W/toy-dev2" &&
    python3 scripts/gpu-check/compare.py "$W/toy-dev/final.safetensors" "$W/toy-dev2/final.safetensors" \
      >"$OUT/toy-repeat.json"
}
export -f toy_run
part toy 90 toy_run

big_step false 90 45

# 6. A step that cannot fit the GPU (128 particles of the 0.6B model at once, nothing
# checkpointed): the job ends with an error naming the step and what to lower, not a panic — the
# runtime reports the failed allocation at the step's next readback (`tensors::read`).
oom() {
  fav bench "${tiny[@]}" --set fav.batch=128 --set fav.conditions=1 --set t2i.micro_batch=128 \
    --set t2i.gradient_checkpointing=false --set t2i.decoder_checkpointing=false \
    --set t2i.model=\"$big/pipeline\" --set t2i.embeddings=\"$big/embeddings.safetensors\" \
    --set t2i.train_prompts=\"$big/train.txt\" --set t2i.eval_prompts=\"$big/eval.txt\" --warmup 0 --runs 1 \
    --field-n 16 --field-d 8 --json "$W/oom.json" >"$W/oom.txt" 2>&1
  python3 scripts/gpu-check/judge.py oom "$W/oom.txt" $? "ran out of memory" | tee "$OUT/oom.json" | grep -q '"ok": true'
}
export -f oom
export big
[ "$dev" = cuda ] && part oom 60 oom

python3 scripts/gpu-check/summary.py "$OUT" | tee "$OUT/summary.txt"
note "done"
rm -rf "$W"
