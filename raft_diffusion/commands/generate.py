"""``raft-diffusion generate``: a pipeline plus an optional LoRA (or fine-tuned denoiser) to images."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("generate", help="generate images from a pipeline and an optional LoRA or fine-tuned denoiser",
                       description="Generate images with a diffusion pipeline (hub id, folder or alias) and an optional RAFT "
                                   "LoRA or fine-tuned denoiser. With --lora RUN_DIR every option left out comes from the run's config.yaml "
                                   "(model, scheduler, steps, guidance, size; by default its eval prompts and eval seeds). "
                                   "Existing files in --out are never overwritten: new images take the next numbers.")
    p.add_argument("--model", default=None, help="hub id, diffusers folder or alias (default: the run's model, else 'tiny')")
    p.add_argument("--family", default=None, help="model family (default: detected, or the run's)")
    p.add_argument("--lora", "--weights", dest="lora",
                   help="what a run trained: a run folder (its LoRA, or its fine-tuned unet/ or transformer/ with "
                        "train.adapter full), a .safetensors LoRA file or a saved denoiser folder")
    p.add_argument("--prompt", action="append", default=[], help="prompt text (repeatable)")
    p.add_argument("--prompts", help="prompt set name or .txt/.jsonl/.csv file")
    p.add_argument("--template", default=None, help="template for --prompts, e.g. 'a photo of a {}'")
    p.add_argument("--out", "-o", required=True, help="folder for the PNGs")
    p.add_argument("--num-images", type=int, default=None, help="images per prompt (default 1, or the run's eval count)")
    p.add_argument("--seed", type=int, default=None, help="base seed (default 0, or the run's eval seeds)")
    p.add_argument("--scheduler", default=None, help="sampler (default: the pipeline's own, or the run's)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default 20, or the run's)")
    p.add_argument("--eta", type=float, default=None,
                   help="DDIM eta: 0 deterministic, 1 ancestral (default 0, or the run's; samplers without eta ignore it)")
    p.add_argument("--guidance-scale", type=float, default=None, help="guidance (default 7.5, or the run's)")
    p.add_argument("--height", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--negative-prompt", default=None)
    p.add_argument("--dtype", default=None, help="weights dtype (default float32, or the run's)")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=8)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from raft_diffusion.generate import generate

    texts = list(args.prompt)
    if args.prompts:
        import prompts

        texts += [p.text for p in prompts.load(args.prompts, template=args.template)]
    paths = generate(
        args.model, texts, args.out, lora=args.lora, seed=args.seed, num_images=args.num_images, scheduler=args.scheduler,
        steps=args.steps, eta=args.eta, guidance_scale=args.guidance_scale, height=args.height, width=args.width, dtype=args.dtype,
        device=args.device, batch_size=args.batch_size, family=args.family, negative_prompt=args.negative_prompt,
    )
    print(f"wrote {len(paths)} images to {args.out}")
    return 0
