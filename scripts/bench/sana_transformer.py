#!/usr/bin/env python3
"""PyTorch's side of the SANA transformer benchmark (trainer/benches/sana_transformer.rs runs it in
the same run): diffusers' SanaTransformer2DModel from a config.json (random float32 weights),
forward and backward to the latents on a [1, C, S, S] latent with `tokens` prompt tokens, median
seconds over runs and peak RSS, as one JSON line.

    python3 scripts/bench/sana_transformer.py CONFIG.json SIZE TOKENS RUNS THREADS [ckpt]

With `ckpt`, diffusers' gradient checkpointing is on (every transformer block recomputed).
"""

import json
import resource
import statistics
import sys
import time

import torch
from diffusers import SanaTransformer2DModel

path, size, tokens, runs, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
torch.set_num_threads(threads)
torch.manual_seed(0)
cfg = {k: v for k, v in json.load(open(path)).items() if not k.startswith("_")}
model = SanaTransformer2DModel(**cfg).eval()
if len(sys.argv) > 6 and sys.argv[6] == "ckpt":
    model.enable_gradient_checkpointing()
for p in model.parameters():
    p.requires_grad_(False)
c = cfg.get("in_channels", 32)
x = torch.randn(1, c, size, size)
ctx = torch.randn(1, tokens, cfg.get("caption_channels", 2304))
mask = torch.ones(1, tokens)
t, g = torch.tensor([0.5]), torch.tensor([0.45])


def once():
    px = x.clone().requires_grad_(True)
    y = model(px, encoder_hidden_states=ctx, timestep=t, guidance=g, encoder_attention_mask=mask).sample
    y.sum().backward()
    return px.grad


once()
times = []
for _ in range(runs):
    s = time.perf_counter()
    once()
    times.append(time.perf_counter() - s)
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"median_s": statistics.median(times), "min_s": min(times), "peak_rss": rss}))
