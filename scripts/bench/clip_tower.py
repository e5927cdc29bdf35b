#!/usr/bin/env python3
"""PyTorch's side of the CLIP image tower benchmark (trainer/benches/clip_tower.rs runs it in the
same run): transformers' CLIPVisionModelWithProjection built from a config.json, forward and
backward to the pixels, median seconds over runs, as one JSON line.

    python3 scripts/bench/clip_tower.py CONFIG.json BATCH RUNS THREADS
"""

import json
import statistics
import sys
import time

import torch
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

path, batch, runs, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(threads)
torch.manual_seed(0)
cfg = json.load(open(path))
vision = cfg.get("vision_config", cfg)
config = CLIPVisionConfig(**{k: v for k, v in vision.items() if k not in ("model_type", "transformers_version")})
config.projection_dim = cfg.get("projection_dim", config.projection_dim)
model = CLIPVisionModelWithProjection(config).eval()
for p in model.parameters():
    p.requires_grad_(False)
x = torch.randn(batch, 3, config.image_size, config.image_size)


def once():
    px = x.clone().requires_grad_(True)
    model(pixel_values=px).image_embeds.sum().backward()
    return px.grad


once()
times = []
for _ in range(runs):
    t = time.perf_counter()
    once()
    times.append(time.perf_counter() - t)
print(json.dumps({"median_s": statistics.median(times), "min_s": min(times), "torch": torch.__version__}))
