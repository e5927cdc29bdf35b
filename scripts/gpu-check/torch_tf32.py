#!/usr/bin/env python3
"""PyTorch's own error on the tiny SANA-Sprint transformer fixture (trainer/tests/data/sana) on a
device, in float32 with TF32 off (PyTorch's default for matmul) and on: the figures to read the
`device` test binary's errors against. burn-cuda may run float32 products in TF32 (2^-11
relative rounding) wherever its autotune picks a tensor-core kernel, which the fixture's 2e-5 /
1e-4 tolerances do not allow for; PyTorch in TF32 on the same GPU shows what that costs a
faithful implementation. One JSON line, errors as the tests measure them (max |a - b| over
max |b|, b the float32 CPU fixture).

    python3 scripts/gpu-check/torch_tf32.py --device cuda
"""

import argparse
import json
from pathlib import Path

import torch
from diffusers import SanaTransformer2DModel
from safetensors.torch import load_file

ap = argparse.ArgumentParser()
ap.add_argument("--device", default="cuda")
args = ap.parse_args()
data = Path(__file__).resolve().parents[2] / "trainer/tests/data/sana"
dev = torch.device(args.device)
model = SanaTransformer2DModel.from_pretrained(data / "transformer").to(dev).eval()
fx = {k: v.to(dev) for k, v in load_file(data / "transformer_io.safetensors").items()}


def rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


def set_tf32(on):
    """Matmuls and convolutions in TF32 or IEEE float32 (PyTorch's new switches where it has them:
    mixing them with the legacy ones is an error)."""
    if hasattr(torch.backends.cuda.matmul, "fp32_precision"):
        torch.backends.cuda.matmul.fp32_precision = "tf32" if on else "ieee"
        torch.backends.cudnn.conv.fp32_precision = "tf32" if on else "ieee"
    else:
        torch.backends.cuda.matmul.allow_tf32 = on
        torch.backends.cudnn.allow_tf32 = on


out = {"device": str(dev)}
for tf32 in [False, True]:
    set_tf32(tf32)
    x = fx["x"].clone().requires_grad_(True)
    y = model(x, encoder_hidden_states=fx["ctx"], timestep=fx["t"], guidance=fx["guidance"],
              encoder_attention_mask=fx["mask"]).sample
    (y * fx["cotangent"]).sum().backward()
    key = "tf32" if tf32 else "fp32"
    out[key] = {"output_rel": rel(y.detach(), fx["y"]), "grad_rel": rel(x.grad, fx["grad"])}
print(json.dumps(out))
