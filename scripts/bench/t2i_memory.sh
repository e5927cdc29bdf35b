#!/usr/bin/env bash
# Peak memory of one t2i FAV step with and without gradient checkpointing (BENCHMARKS.md):
# SANA-Sprint 0.6B (random float32 weights made by diffusers from the committed manifest's
# config, sample_size 16 → 512²) with the DC-AE f32c32 decoder, 4 steps, 300 random prompt
# tokens, K = 2 particles of one prompt, micro_batch 1, the tiny open_clip reward.
#
#     scripts/bench/t2i_memory.sh PYTHON_WITH_TORCH_AND_DIFFUSERS [path/to/fav]
# Needs ~4 GB of disk under $TMPDIR and ~20 GiB of memory (the run without checkpointing).
set -euo pipefail
cd "$(dirname "$0")/../.."
py=$1
fav=$(realpath "${2:-target/release/fav}")
d=$(mktemp -d)
trap 'rm -rf "$d"' EXIT
"$py" - "$d" <<'PY'
import json, sys, torch
from pathlib import Path
from diffusers import SanaTransformer2DModel, AutoencoderDC
from safetensors.torch import save_file
d = Path(sys.argv[1]); torch.manual_seed(0)
root = Path("trainer/tests/data/sana")
strip = lambda m: {k: v for k, v in json.load(open(m))["config"].items() if not k.startswith("_")}
tc = strip(root / "manifest_sana_sprint_0.6b_1024px.json"); tc["sample_size"] = 16
SanaTransformer2DModel(**tc).save_pretrained(d / "pipe" / "transformer")
AutoencoderDC(**strip(root / "manifest_dc_ae_f32c32_sana.json")).save_pretrained(d / "pipe" / "vae")
prompts = ["a red cube on a table", "a blue bird and a brown bear"]
save_file({"embeddings": torch.randn(2, 300, 2304) * 0.1, "mask": torch.ones(2, 300)}, str(d / "emb.safetensors"),
          metadata={"prompts": json.dumps(prompts)})
(d / "train.txt").write_text(prompts[0] + "\n"); (d / "eval.txt").write_text(prompts[1] + "\n")
PY
clip=$(realpath trainer/tests/data/clip)
for on in false true; do
  echo "== t2i.gradient_checkpointing = $on"
  /usr/bin/time -v "$fav" train examples/sana-sprint-tiny.toml --resume none --out "$d/run-$on" \
    --set steps=1 --set fav.batch=2 --set fav.conditions=1 --set eval.every=1 --set checkpoint.every=0 \
    --set t2i.model=\"$d/pipe\" --set t2i.embeddings=\"$d/emb.safetensors\" \
    --set t2i.train_prompts=\"$d/train.txt\" --set t2i.eval_prompts=\"$d/eval.txt\" \
    --set t2i.eval_batch=2 --set t2i.grid=1 --set t2i.micro_batch=1 --set t2i.lora_rank=8 --set t2i.lora_alpha=8.0 \
    --set reward.model=\"$clip/open_clip_tiny.pt\" --set reward.model_config=\"$clip/open_clip_tiny.json\" \
    --set t2i.gradient_checkpointing=$on --set t2i.decoder_checkpointing=$on 2>&1 | grep -E "Maximum resident|Elapsed \(wall"
done
