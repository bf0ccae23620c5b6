"""``raft-diffusion tiny-model DIR``: write a tiny random SD pipeline (offline), for tests and trials."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from raft_diffusion.errors import ConfigError


def register(sub: Any) -> None:
    p = sub.add_parser("tiny-model", help="write a tiny random Stable Diffusion pipeline folder (offline)",
                       description="Write a tiny random StableDiffusionPipeline (real CLIP tokenizer) that from_pretrained loads.")
    p.add_argument("dir", help="output folder (must not exist or be empty)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sample-size", type=int, default=16, help="UNet latent size; images are twice this")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from raft_diffusion.diffusion.pipeline import write_tiny_pipeline

    out = Path(args.dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{str(out)!r} exists and is not an empty folder; choose a new folder")
    if args.sample_size < 4 or args.sample_size % 2:
        raise ConfigError(f"--sample-size {args.sample_size} must be an even number >= 4")
    write_tiny_pipeline(out, seed=args.seed, sample_size=args.sample_size)
    print(f"wrote a tiny Stable Diffusion pipeline to {out} (StableDiffusionPipeline.from_pretrained loads it)")
    return 0
