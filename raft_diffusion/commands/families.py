"""``raft-diffusion families``: list the model families, one line each."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("families", help="list the diffusion model families",
                              description="List the model families: name, pipeline class, what the LoRA trains.")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from raft_diffusion.diffusion.families import FAMILIES

    rows = [(e.name, e.factory().pipeline_class, e.description) for e in FAMILIES]
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    for name, cls, description in rows:
        print(f"{name:<{w0}}  {cls:<{w1}}  {description}".rstrip())
    return 0
