#!/usr/bin/env python3
"""Prompt embeddings for SANA-Sprint jobs and `fav sample`: Gemma-2-2B-IT hidden states computed
by diffusers' own `SanaSprintPipeline.encode_prompt`, with the pipeline's default "complex human
instruction" prefix and 300-token limit (the first token plus the last 299, as the pipeline
selects them), written as the safetensors file the trainer reads:

    embeddings  [P, L, caption_channels]  float32 (or --dtype bf16)
    mask        [P, L]                    1 = token, 0 = padding
    metadata    "prompts": the prompts in file order, as a JSON list

    python3 scripts/sana_prompt_embeddings.py --model /path/to/Sana_Sprint_1.6B_1024px_diffusers \\
        --prompts prompts.txt --out prompts.safetensors

`--model` is the downloaded diffusers pipeline folder (its `tokenizer/` and `text_encoder/` are
read; the transformer and VAE are not loaded). One prompt per line; blank lines are skipped.
Needs torch, transformers, diffusers, safetensors (a venv outside the repository).
"""

import argparse
import inspect
import json

import torch
from diffusers import SanaSprintPipeline
from safetensors.torch import save_file


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--prompts", required=True, help="a text file, one prompt per line")
    p.add_argument("--out", required=True)
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=16)
    args = p.parse_args()

    prompts = [l.strip() for l in open(args.prompts, encoding="utf-8") if l.strip()]
    if not prompts:
        raise SystemExit(f"{args.prompts}: no prompts")
    pipe = SanaSprintPipeline.from_pretrained(args.model, transformer=None, vae=None, torch_dtype=torch.bfloat16)
    pipe.text_encoder.to(args.device)
    # The instruction prefix the pipeline uses when called without one.
    instruction = inspect.signature(SanaSprintPipeline.__call__).parameters["complex_human_instruction"].default
    embeds, masks = [], []
    with torch.no_grad():
        for i in range(0, len(prompts), args.batch):
            e, m = pipe.encode_prompt(prompts[i : i + args.batch], device=args.device, max_sequence_length=300,
                                      complex_human_instruction=instruction)
            embeds.append(e.float().cpu())
            masks.append(m.float().cpu())
    emb = torch.cat(embeds)
    if args.dtype == "bf16":
        emb = emb.to(torch.bfloat16)
    save_file({"embeddings": emb.contiguous(), "mask": torch.cat(masks).contiguous()}, args.out,
              metadata={"prompts": json.dumps(prompts)})
    print(f"{len(prompts)} prompts -> {args.out}: embeddings {list(emb.shape)} {emb.dtype}")


if __name__ == "__main__":
    main()
