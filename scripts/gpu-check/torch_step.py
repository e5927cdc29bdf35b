#!/usr/bin/env python3
"""PyTorch's side of the GPU check's step timing: the text-to-image FAV step that `fav bench`
times (spec §5–§7.1), in diffusers + peft + open_clip, on one prompt with K particles.

Per step, as fav does it with `t2i.micro_batch` (`--micro`) rows at a time: K generated and K
reference samples without a graph (4 sCM steps of the transformer, with LoRA on and off; DC-AE
decode; the open_clip image tower; L2-normalised features), the FAV field on the features (KDE
score of the reference, β·∇R, one-sided repulsion), then each micro-batch regenerated with its
graph and backpropagated with the regression's gradient −2v/(N·D) (one pass with its graph
instead when a micro-batch holds all K), and one AdamW step on the adapters (clipped at
`--clip`). As the reference trains: the transformer's weights in bf16 under bf16 autocast with
float32 adapters (`--bf16 1`), the VAE and reward tower in float32, gradient checkpointing in the
transformer (diffusers' switch) and per DC-AE up-block (`--ckpt 1`). The reward is HPSv2's
form, ⟨f, t⟩ with a fixed unit vector t (fav computes the text embedding once, outside the step).

Prints one JSON line: median and min step seconds over `--runs` after `--warmup`, peak CUDA
memory allocated and reserved (bytes), images per second (generated + reference).

    python3 scripts/gpu-check/torch_step.py --pipeline DIR --embeddings FILE --clip-pt FILE \
        --clip-json FILE [--k 4] [--runs 5] [--warmup 2] [--bf16 1] [--ckpt 1] [--device cuda]
"""

import argparse
import json
import math
import statistics
import time

import open_clip
import torch
import torch.nn.functional as F
from diffusers import AutoencoderDC, SanaTransformer2DModel
from peft import LoraConfig
from safetensors.torch import load_file

p = argparse.ArgumentParser()
p.add_argument("--pipeline", required=True)
p.add_argument("--embeddings", required=True)
p.add_argument("--clip-pt", required=True)
p.add_argument("--clip-json", required=True)
p.add_argument("--k", type=int, default=4)
p.add_argument("--micro", type=int, default=1)
p.add_argument("--steps", type=int, default=4)
p.add_argument("--guidance", type=float, default=4.5)
p.add_argument("--beta", type=float, default=100.0)
p.add_argument("--temp", type=float, default=0.3)
p.add_argument("--rank", type=int, default=32)
p.add_argument("--alpha", type=float, default=32.0)
p.add_argument("--lr", type=float, default=5e-4)
p.add_argument("--clip", type=float, default=1.0)
p.add_argument("--runs", type=int, default=5)
p.add_argument("--warmup", type=int, default=2)
p.add_argument("--bf16", type=int, default=1)
p.add_argument("--ckpt", type=int, default=1)
p.add_argument("--device", default="cuda")
a = p.parse_args()

dev = torch.device(a.device)
cuda = dev.type == "cuda"
torch.manual_seed(0)

transformer = SanaTransformer2DModel.from_pretrained(a.pipeline, subfolder="transformer").to(dev)
vae = AutoencoderDC.from_pretrained(a.pipeline, subfolder="vae").to(dev, torch.float32)
transformer.requires_grad_(False)
vae.requires_grad_(False)
transformer.to(torch.bfloat16 if a.bf16 else torch.float32)
transformer.add_adapter(LoraConfig(r=a.rank, lora_alpha=a.alpha, init_lora_weights="gaussian",
                                   target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
lora = [q for q in transformer.parameters() if q.requires_grad]
for q in lora:
    q.data = q.data.float()  # fp32 adapters on a bf16 base (diffusers' cast_training_params)


class Checkpointed(torch.nn.Module):
    """A module recomputed in the backward pass (AutoencoderDC has no switch of its own)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, *x):
        return torch.utils.checkpoint.checkpoint(self.inner, *x, use_reentrant=False)


if a.ckpt:
    transformer.enable_gradient_checkpointing()
    # The decoder per up-block, as the reference checkpoints it (spec §7.1).
    for i, block in enumerate(vae.decoder.up_blocks):
        vae.decoder.up_blocks[i] = Checkpointed(block)
opt = torch.optim.AdamW(lora, lr=a.lr, weight_decay=0.01)

cfg = json.load(open(a.clip_json))
tower = open_clip.CLIP(**cfg).eval()
state = torch.load(a.clip_pt, map_location="cpu", weights_only=False)
tower.load_state_dict({k: v.float() for k, v in state.get("state_dict", state).items()}, strict=False)
tower = tower.to(dev).requires_grad_(False)
size = cfg["vision_cfg"]["image_size"]
mean = torch.tensor([0.48145466, 0.4578275, 0.40821073], device=dev).view(1, 3, 1, 1)
std = torch.tensor([0.26862954, 0.26130258, 0.27577711], device=dev).view(1, 3, 1, 1)
t_dir = F.normalize(torch.randn(cfg["embed_dim"], generator=torch.Generator().manual_seed(2)), dim=0).to(dev)

emb = load_file(a.embeddings)
ctx = emb["embeddings"][:1].to(dev)
mask = emb["mask"][:1].to(dev)
tc = transformer.config
guidance = a.guidance * tc.guidance_embeds_scale
sd, tmax = 0.5, 1.57080
ts = [tmax, 1.3, 0.0] if a.steps == 2 else [tmax * (1 - i / a.steps) for i in range(a.steps + 1)]
shape = (tc.in_channels, tc.sample_size, tc.sample_size)


def sample(noise, adapters):
    """noise [n, steps, C, h, w] → L2-normalised reward features [n, d] (SANA-Sprint's sCM)."""
    if adapters:
        transformer.enable_adapters()
    else:
        transformer.disable_adapters()
    n = noise.shape[0]
    c, m = ctx.expand(n, -1, -1), mask.expand(n, -1)
    x = noise[:, 0] * sd
    g = torch.full((n,), guidance, device=dev)
    for i in range(a.steps):
        s = ts[i]
        u = math.sin(s) / (math.cos(s) + math.sin(s))
        norm = math.sqrt(u * u + (1 - u) ** 2)
        inp = x * (norm / sd)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bool(a.bf16)):
            out = transformer(inp, encoder_hidden_states=c, encoder_attention_mask=m, guidance=g,
                              timestep=torch.full((n,), u, device=dev)).sample
        f = (inp * (1 - 2 * u) + out.float() * (1 - 2 * u + 2 * u * u)) * (sd / norm)
        denoised = x * math.cos(s) - f * math.sin(s)
        t = ts[i + 1]
        x = denoised * math.cos(t) + noise[:, min(i + 1, a.steps - 1)] * (math.sin(t) * sd)
    img = vae.decode(denoised / sd / vae.config.scaling_factor).sample
    img = (img / 2 + 0.5).clamp(0, 1)
    img = F.interpolate(img, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
    return F.normalize(tower.encode_image((img - mean) / std), dim=-1)


def field(x, y, grad):
    """FAV's velocity (spec §2.3, §3): one temperature, image clamp, one-sided repulsion."""
    n, t = x.shape[0], a.temp
    k = torch.exp(-torch.cdist(x, y) ** 2 / t)
    z = k.sum(1, keepdim=True)
    score = (2 / t) * (k @ y - z * x) / z.clamp_min(1e-6)
    u = score + a.beta * grad
    kx = torch.exp(-torch.cdist(x, x) ** 2 / t)
    return (kx @ u) / n + (kx.sum(1, keepdim=True) * x - kx @ x) / (t * n)


def step(i):
    gen = torch.Generator(device=dev).manual_seed(1000 + i)
    noise = torch.randn(2, a.k, a.steps, *shape, generator=gen, device=dev)
    opt.zero_grad(set_to_none=True)
    with torch.no_grad():
        fy = sample(noise[1], False)
    if a.micro >= a.k:
        # One pass with its graph holds every row (fav does the same).
        fx = sample(noise[0], True)
        n, d = fx.shape
        fx.backward(-2 * field(fx.detach(), fy, t_dir.expand_as(fx)) / (n * d))
    else:
        with torch.no_grad():
            fx = sample(noise[0], True)
            v = field(fx, fy, t_dir.expand_as(fx))
        n, d = fx.shape
        for s in range(0, n, a.micro):
            f = sample(noise[0, s:s + a.micro], True)
            f.backward(-2 * v[s:s + a.micro] / (n * d))
    torch.nn.utils.clip_grad_norm_(lora, a.clip)
    opt.step()


def sync():
    if cuda:
        torch.cuda.synchronize()


for i in range(a.warmup):
    step(i)
sync()
if cuda:
    torch.cuda.reset_peak_memory_stats()
times = []
for i in range(a.runs):
    t0 = time.perf_counter()
    step(a.warmup + i)
    sync()
    times.append(time.perf_counter() - t0)
med = statistics.median(times)
print(json.dumps({
    "k": a.k, "micro": a.micro, "bf16": bool(a.bf16), "ckpt": bool(a.ckpt), "steps": a.steps,
    "median_s": med, "min_s": min(times), "runs": a.runs,
    "images_per_s": 2 * a.k / med,
    "peak_allocated": torch.cuda.max_memory_allocated() if cuda else None,
    "peak_reserved": torch.cuda.max_memory_reserved() if cuda else None,
    "torch": torch.__version__, "device": torch.cuda.get_device_name() if cuda else "cpu",
}))
