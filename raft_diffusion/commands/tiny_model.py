"""``raft-diffusion tiny-model [--family NAME] DIR``: write a tiny random pipeline (offline), for tests and trials."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from raft_diffusion.errors import ConfigError


def register(sub: Any) -> None:
    p = sub.add_parser("tiny-model", help="write a tiny random pipeline folder of a model family (offline)",
                       description="Write a tiny random pipeline (random weights, real CLIP tokenizer) that the "
                                   "family's pipeline class loads with from_pretrained.")
    p.add_argument("dir", help="output folder (must not exist or be empty)")
    p.add_argument("--family", default="sd", help="model family (see `raft-diffusion families`); default sd")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sample-size", type=int, default=16, help="UNet latent size; images are twice this")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from raft_diffusion.diffusion.families import get_family
    from raft_diffusion.diffusion.tiny import write_tiny_pipeline

    out = Path(args.dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{str(out)!r} exists and is not an empty folder; choose a new folder")
    if args.sample_size < 4 or args.sample_size % 2:
        raise ConfigError(f"--sample-size {args.sample_size} must be an even number >= 4")
    cls = get_family(args.family)
    write_tiny_pipeline(out, seed=args.seed, sample_size=args.sample_size, family=args.family)
    print(f"wrote a tiny {cls.name} pipeline to {out} ({cls.pipeline_class}.from_pretrained loads it)")
    return 0
