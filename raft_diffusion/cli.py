"""The ``raft-diffusion`` command: discovers sub-commands in :mod:`raft_diffusion.commands`, then
adds those plugins contribute (:func:`raft_diffusion.plugins.register_command`)."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import sys
import traceback
from typing import Sequence

from raft_diffusion import __version__
from raft_diffusion.errors import RaftError

log = logging.getLogger("raft_diffusion")


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every built-in sub-command, then every plugin's."""
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
    _add_plugin_commands(sub)
    for command in sub.choices.values():  # -v after the command too: raft-diffusion train ... -v
        try:
            command.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                                 help="log at DEBUG level and show the traceback of a failure")
        except argparse.ArgumentError:  # a plugin command that defines -v itself
            pass
    return parser


def _add_plugin_commands(sub: argparse._SubParsersAction) -> None:
    """Add the sub-commands plugins registered; one that clashes with a built-in is skipped with a warning."""
    from raft_diffusion.plugins import COMMANDS, load_plugins

    load_plugins()
    for entry in COMMANDS:
        if entry.name in sub.choices:
            log.warning("plugin command %r is skipped: a command of that name already exists; rename it", entry.name)
            continue
        entry.factory(sub)


def split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """Separate ``--section.key value`` / ``--section.key=value`` config overrides from the rest."""
    rest: list[str] = []
    overrides: list[str] = []
    i = 0
    while i < len(argv):
        tok = argv[i]
        if tok.startswith("--") and "." in tok.partition("=")[0]:
            overrides.append(tok)
            if "=" not in tok and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                overrides.append(argv[i + 1])
                i += 1
        else:
            rest.append(tok)
        i += 1
    return rest, overrides


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point. Returns the exit status: 0 ok, 2 bad input, 1 a run that failed."""
    parser = build_parser()
    rest, overrides = split_overrides(list(sys.argv[1:] if argv is None else argv))
    args = parser.parse_args(rest)
    if overrides and not getattr(args, "accepts_overrides", False):
        parser.error(f"unrecognized arguments: {' '.join(overrides)}")
    args.overrides_raw = overrides
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
    except KeyboardInterrupt:
        print("raft-diffusion: interrupted; completed rounds are on disk (resume with --resume)", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - every failure ends as one line (the traceback with -v)
        code, line = exit_status(exc)
        if args.verbose:
            traceback.print_exc(file=sys.stderr)
        print(f"raft-diffusion: error: {line}", file=sys.stderr)
        return code


def exit_status(exc: BaseException) -> tuple[int, str]:
    """(exit status, one-line message) of a failure: 2 for bad input (a ConfigError and the other input
    errors, a missing file), 1 for a run that failed (RunError) or an unexpected error."""
    from raft_diffusion.errors import RunError

    text = " ".join(str(exc).split())
    if isinstance(exc, RaftError):
        return (1 if isinstance(exc, RunError) else 2), text
    if isinstance(exc, FileNotFoundError):
        return 2, text
    if isinstance(exc, OSError):
        return 1, f"{text}; check the disk and the path, then rerun (a run continues with --resume latest)"
    return 1, f"unexpected {type(exc).__name__}: {text or 'no message'}; rerun with -v for the traceback and report it"


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
