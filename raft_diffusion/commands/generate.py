"""``raft-diffusion generate``: a pipeline plus an optional LoRA to images."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("generate", help="generate images from a pipeline and an optional LoRA",
                       description="Generate images with a Stable Diffusion pipeline (hub id or folder) and an optional RAFT LoRA.")
    p.add_argument("--model", default="tiny", help="hub id, diffusers folder, or 'tiny' (default)")
    p.add_argument("--lora", help="run folder or .safetensors LoRA file to load")
    p.add_argument("--prompt", action="append", default=[], help="prompt text (repeatable)")
    p.add_argument("--prompts", help="prompt set name or .txt/.jsonl/.csv file")
    p.add_argument("--template", default=None, help="template for --prompts, e.g. 'a photo of a {}'")
    p.add_argument("--out", "-o", required=True, help="folder for the PNGs")
    p.add_argument("--num-images", type=int, default=1, help="images per prompt")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scheduler", default="ddim")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance-scale", type=float, default=7.5)
    p.add_argument("--height", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=8)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from raft_diffusion.api import generate

    texts = list(args.prompt)
    if args.prompts:
        import prompts

        texts += [p.text for p in prompts.load(args.prompts, template=args.template)]
    paths = generate(
        args.model, texts, args.out, lora=args.lora, seed=args.seed, num_images=args.num_images, scheduler=args.scheduler,
        steps=args.steps, guidance_scale=args.guidance_scale, height=args.height, width=args.width, dtype=args.dtype,
        device=args.device, batch_size=args.batch_size,
    )
    print(f"wrote {len(paths)} images to {args.out}")
    return 0
