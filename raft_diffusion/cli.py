"""The ``raft-diffusion`` command: discovers sub-commands in :mod:`raft_diffusion.commands`."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import sys
from typing import Sequence

from raft_diffusion import __version__
from raft_diffusion.errors import RaftError

log = logging.getLogger("raft_diffusion")


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every discovered sub-command."""
    parser = argparse.ArgumentParser(
        prog="raft-diffusion",
        description="RAFT (Reward rAnked FineTuning) for Stable Diffusion and causal language models.",
    )
    parser.add_argument("--version", action="version", version=f"raft-diffusion {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    import raft_diffusion.commands as commands

    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"raft_diffusion.commands.{info.name}")
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point. Returns the exit status: 0 ok, 2 bad input, 1 a run that failed."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "accepts_overrides", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.overrides_raw = extra
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(message)s" if not args.verbose else "%(asctime)s %(name)s %(levelname)s: %(message)s",
        stream=sys.stderr,
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except RaftError as exc:
        from raft_diffusion.errors import RunError

        print(f"raft-diffusion: error: {exc}", file=sys.stderr)
        return 1 if isinstance(exc, RunError) else 2
    except KeyboardInterrupt:
        print("raft-diffusion: interrupted; completed rounds are on disk (resume with --resume)", file=sys.stderr)
        return 130
    except FileNotFoundError as exc:
        print(f"raft-diffusion: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
