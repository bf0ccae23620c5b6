"""``raft-diffusion prompts``: list the registered prompt sets."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("prompts", help="list the registered prompt sets", description="List the registered prompt sets.")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import prompts

    for name, desc in prompts.describe():
        print(f"{name:20s} {desc}")
    return 0
