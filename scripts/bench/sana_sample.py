#!/usr/bin/env python3
"""diffusers' side of the whole-sample benchmark (trainer/benches/sana_sample.rs runs it in the
same run): SanaSprintPipeline (4 sCM steps, guidance through the embedding, output_type="latent")
and AutoencoderDC.decode, random float32 weights from the two config.json files, 300 prompt
tokens, no gradient; median seconds over runs, as one JSON line.

    python3 scripts/bench/sana_sample.py TRANSFORMER.json DCAE.json TOKENS RUNS THREADS
"""

import json
import statistics
import sys
import time

import torch
from diffusers import AutoencoderDC, SanaSprintPipeline, SanaTransformer2DModel, SCMScheduler

tpath, apath, tokens, runs, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
torch.set_num_threads(threads)
torch.manual_seed(0)
strip = lambda p: {k: v for k, v in json.load(open(p)).items() if not k.startswith("_")}
transformer = SanaTransformer2DModel(**strip(tpath)).eval()
vae = AutoencoderDC(**strip(apath)).eval()
pipe = SanaSprintPipeline(tokenizer=None, text_encoder=None, transformer=transformer, vae=vae,
                          scheduler=SCMScheduler(prediction_type="trigflow", sigma_data=0.5))
pipe.set_progress_bar_config(disable=True)
c, s = transformer.config.in_channels, transformer.config.sample_size
emb = torch.randn(1, tokens, transformer.config.caption_channels)
mask = torch.ones(1, tokens)


def once():
    with torch.no_grad():
        lat = pipe(prompt_embeds=emb, prompt_attention_mask=mask, num_inference_steps=4, guidance_scale=4.5,
                   latents=torch.randn(1, c, s, s), height=s * pipe.vae_scale_factor,
                   width=s * pipe.vae_scale_factor, output_type="latent", use_resolution_binning=False,
                   intermediate_timesteps=None).images
        return vae.decode(lat / vae.config.scaling_factor).sample


times = []
for _ in range(runs):
    t = time.perf_counter()
    once()
    times.append(time.perf_counter() - t)
print(json.dumps({"median_s": statistics.median(times)}))
