#!/usr/bin/env bash
# `fav plan` for examples/sana-sprint-1.6b-hpsv2.toml at 8 and 64 ranks, without downloading
# anything: the plan reads configs only (the transformer's and DC-AE's config.json, open_clip's
# ViT-H-14 JSON, the prompt files), so a folder of the published configs — taken from the
# manifests scripts/fixtures/{sana,clip}.py wrote — an empty placeholder for the HPSv2 checkpoint
# and a one-token prompt-embeddings file for the DrawBench prompts (the config check reads its
# prompt list and channels; the plan counts 300 prompt tokens whatever the file holds) stand in
# for the downloads. The device is set to cpu only because this build has no CUDA (the estimate
# is per rank either way), with the precision CUDA runs at (`auto` there: bf16).
#
#     scripts/bench/plan_sana.sh [path/to/fav]
#     PLAN_EXTRA="--set t2i.gradient_checkpointing=false --set t2i.decoder_checkpointing=false" \
#       scripts/bench/plan_sana.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
fav=${1:-target/release/fav}
d=$(mktemp -d)
trap 'rm -rf "$d"' EXIT
mkdir -p "$d/sana/transformer" "$d/sana/vae"
python3 - "$d" <<'PY'
import json, sys
d = sys.argv[1]
def config(manifest, out):
    json.dump(json.load(open(manifest))["config"], open(out, "w"))
config("trainer/tests/data/sana/manifest_sana_sprint_1.6b_1024px.json", f"{d}/sana/transformer/config.json")
config("trainer/tests/data/sana/manifest_dc_ae_f32c32_sana.json", f"{d}/sana/vae/config.json")
config("trainer/tests/data/clip/manifest_open_clip_vit_h_14.json", f"{d}/ViT-H-14.json")
# Embeddings [P, 1, 2304] (zeros) and mask [P, 1] for the train then eval prompts, in safetensors.
import struct
prompts = [l for f in ("train", "eval") for l in open(f"examples/prompts/drawbench_{f}.txt").read().splitlines() if l.strip()]
p, c = len(prompts), 2304
header = {"__metadata__": {"prompts": json.dumps(prompts)},
          "embeddings": {"dtype": "F32", "shape": [p, 1, c], "data_offsets": [0, 4 * p * c]},
          "mask": {"dtype": "F32", "shape": [p, 1], "data_offsets": [4 * p * c, 4 * p * c + 4 * p]}}
h = json.dumps(header).encode()
h += b" " * (-len(h) % 8)
with open(f"{d}/embeddings.safetensors", "wb") as out:
    out.write(struct.pack("<Q", len(h)) + h + bytes(4 * p * c) + struct.pack(f"<{p}f", *([1.0] * p)))
PY
: > "$d/HPS_v2_compressed.pt"
# 64 ranks cannot split K = 16 particles per prompt: the plan refuses it, then sizes K = 64.
for run in "8" "64" "64 --set fav.batch=64"; do
  set -- $run
  ranks=$1; shift
  echo "== fav plan --ranks $ranks $*"
  "$fav" plan examples/sana-sprint-1.6b-hpsv2.toml --ranks "$ranks" --ranks-here 8 "$@" ${PLAN_EXTRA:-} \
    --set device=\"cpu\" --set t2i.precision=bf16 --set t2i.model=\"$d/sana\" --set t2i.embeddings=\"$d/embeddings.safetensors\" \
    --set reward.model=\"$d/HPS_v2_compressed.pt\" --set reward.model_config=\"$d/ViT-H-14.json\" || true
done
