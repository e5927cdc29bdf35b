#!/usr/bin/env python3
"""A SANA-Sprint pipeline folder with random weights in a published model's shape, for timing.

The transformer and the DC-AE decoder are built by diffusers from the configs in the committed
manifests (trainer/tests/data/sana/manifest_*.json: the published models' own configs), with
diffusers' own initialisation, and saved as users download them (bf16 transformer, float32 VAE);
beside them random prompt embeddings (300 tokens) and one train and one eval prompt, the files a
`task = "t2i"` job reads.

    python3 scripts/gpu-check/make_pipeline.py OUT [--model 0.6b|1.6b] [--sample-size 32]
"""

import argparse
import json
from pathlib import Path

import torch
from diffusers import AutoencoderDC, SanaTransformer2DModel
from safetensors.torch import save_file

p = argparse.ArgumentParser()
p.add_argument("out")
p.add_argument("--model", default="0.6b", choices=["0.6b", "1.6b"])
p.add_argument("--sample-size", type=int, default=32, help="latent side (32: 1024² images)")
a = p.parse_args()

out = Path(a.out)
root = Path(__file__).resolve().parents[2] / "trainer/tests/data/sana"
torch.manual_seed(0)


def config(name):
    return {k: v for k, v in json.loads((root / name).read_text())["config"].items() if not k.startswith("_")}


tc = config(f"manifest_sana_sprint_{a.model}_1024px.json")
tc["sample_size"] = a.sample_size
SanaTransformer2DModel(**tc).to(torch.bfloat16).save_pretrained(out / "pipeline" / "transformer")
AutoencoderDC(**config("manifest_dc_ae_f32c32_sana.json")).save_pretrained(out / "pipeline" / "vae")
prompts = ["a red cube on a wooden table", "a blue bird beside a brown bear"]
g = torch.Generator().manual_seed(1)
save_file({"embeddings": torch.randn(2, 300, tc["caption_channels"], generator=g) * 0.1, "mask": torch.ones(2, 300)},
          str(out / "embeddings.safetensors"), metadata={"prompts": json.dumps(prompts)})
(out / "train.txt").write_text(prompts[0] + "\n")
(out / "eval.txt").write_text(prompts[1] + "\n")
print(out / "pipeline")
