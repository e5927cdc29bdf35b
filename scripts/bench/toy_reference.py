#!/usr/bin/env python3
"""The paper's own toy FAV step (fav-toy, unchanged) timed on PyTorch, the reference of `fav bench`
on the 8-gaussians VAE task (BENCHMARKS.md), with its parts timed alone in the same process:

- step: `gen = model.sample(2048)`, `fav_loss(gen, pos, energy_fn, 0.05)` (fav-toy's
  finetune/fav.py: KDE prior score on 2048 reference points, β∇log r, SVGD field with autograd
  repulsion), `opt.zero_grad(); loss.backward(); opt.step()` — as its `finetune` loop runs it;
- generator: the VAE decoder MLP (8 → 256 → 256 → 256 → 2, SiLU) forward on the batch, and
  forward + backward;
- field: `fav_loss` on a leaf batch (no generator).

Weights are fav-toy's fresh initialisation (a step costs the same whatever they are). Prints one
JSON line of median and min milliseconds over `--runs` after `--warmup`.

    python3 scripts/bench/toy_reference.py FAV_TOY_DIR [--runs 60] [--warmup 5] [--threads 2]

FAV_TOY_DIR is the `fav-toy` folder of the paper's repository (github.com/Jaewoopudding/FAV);
it needs torch, numpy, scipy and tqdm.
"""

import argparse
import json
import statistics
import sys
import time

import torch

p = argparse.ArgumentParser()
p.add_argument("fav_toy")
p.add_argument("--runs", type=int, default=60)
p.add_argument("--warmup", type=int, default=5)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--batch", type=int, default=2048)
a = p.parse_args()
sys.path.insert(0, a.fav_toy)

from finetune.fav import fav_loss  # noqa: E402
from pretrain.vae import VAEModel  # noqa: E402
from utils_2d import get_energy_fn  # noqa: E402

torch.set_num_threads(a.threads)
torch.manual_seed(0)
dev = torch.device("cpu")
model = VAEModel(latent_dim=8, hidden=256, data_dim=2)
energy_fn = get_energy_fn()
with torch.no_grad():
    pool = model.sample(200_000, dev)
opt = torch.optim.Adam(model.parameters(), lr=1e-4)
n = a.batch


def timed(f):
    for _ in range(a.warmup):
        f()
    t = []
    for _ in range(a.runs):
        s = time.perf_counter()
        f()
        t.append(1e3 * (time.perf_counter() - s))
    return {"median_ms": statistics.median(t), "min_ms": min(t)}


def step():
    pos = pool[torch.randint(0, pool.shape[0], (n,))]
    gen = model.sample(n, dev)
    loss = fav_loss(gen, pos, energy_fn, 0.05, beta=1.0)
    opt.zero_grad()
    loss.backward()
    opt.step()


z = torch.randn(n, 8)
decoder = model.decoder


def forward():
    with torch.no_grad():
        decoder(z)


def forward_backward():
    decoder.zero_grad()
    decoder(z).square().mean().backward()


x = model.sample(n, dev).detach()
pos = pool[:n]


def field():
    fav_loss(x.clone().requires_grad_(True), pos, energy_fn, 0.05, beta=1.0)


print(json.dumps({
    "threads": a.threads, "batch": n, "torch": torch.__version__,
    "step": timed(step), "generator_forward": timed(forward), "generator_forward_backward": timed(forward_backward),
    "field": timed(field),
}))
