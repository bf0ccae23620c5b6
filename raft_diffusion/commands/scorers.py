"""``raft-diffusion scorers``: list the registered scorers, one line each."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("scorers", help="list the registered scorers",
                              description="List the registered scorers with a one-line description each.")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import scorers

    entries = scorers.describe()
    width = max((len(n) for n, _ in entries), default=0)
    for name, description in entries:
        print(f"{name:<{width}}  {description}".rstrip())
    return 0
