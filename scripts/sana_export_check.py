#!/usr/bin/env python3
"""Check a SANA-Sprint export of `fav export` with diffusers itself (run by a developer after an
export; CI compares against committed fixtures and never installs torch):

  1. diffusers' `SanaSprintPipeline.load_lora_weights(EXPORT)` takes fav's LoRA file
     (`pytorch_lora_weights.safetensors`) into the base transformer;
  2. diffusers' `SanaTransformer2DModel.from_pretrained(EXPORT/transformer)` loads fav's merged
     transformer;
  3. both give the same output on random inputs of the model's shapes (float32, relative 1e-5),
     and it differs from the base's (the adapters do something).

    /work/venv/bin/python scripts/sana_export_check.py BASE_PIPELINE_DIR EXPORT_DIR
"""

import sys
from pathlib import Path

import torch
from diffusers import SanaSprintPipeline, SanaTransformer2DModel, SCMScheduler

base_dir, export = Path(sys.argv[1]), Path(sys.argv[2])
tdir = base_dir / "transformer" if (base_dir / "transformer").is_dir() else base_dir
torch.manual_seed(0)
base = SanaTransformer2DModel.from_pretrained(tdir, torch_dtype=torch.float32).eval()
c = base.config
x = torch.randn(2, c.in_channels, c.sample_size, c.sample_size)
ctx = torch.randn(2, 8, c.caption_channels)
mask = torch.ones(2, 8)
mask[1, 5:] = 0
t = torch.tensor([0.7, 0.3])
g = torch.tensor([0.45, 0.45])


def run(model):
    with torch.no_grad():
        return model(x, encoder_hidden_states=ctx, timestep=t, guidance=g, encoder_attention_mask=mask).sample


y_base = run(base)
pipe = SanaSprintPipeline(tokenizer=None, text_encoder=None, transformer=base, vae=None,
                          scheduler=SCMScheduler(prediction_type="trigflow", sigma_data=0.5))
pipe.load_lora_weights(export)
y_lora = run(base)
merged = SanaTransformer2DModel.from_pretrained(export / "transformer", torch_dtype=torch.float32).eval()
y_merged = run(merged)
scale = y_lora.abs().max().item()
diff = (y_lora - y_merged).abs().max().item()
effect = (y_lora - y_base).abs().max().item()
print(f"diffusers load_lora_weights vs fav's merged transformer: max |diff| {diff:.3e} of scale {scale:.3e}; "
      f"LoRA effect {effect:.3e}")
if not diff <= 1e-5 * scale or effect == 0.0:
    sys.exit("export check FAILED")
print("export check passed")
