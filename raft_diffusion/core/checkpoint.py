"""Atomic round checkpoints: written under a temporary name, completed, then renamed into place.

Layout: ``RUN/checkpoints/round-0003/{state.pt, loop.json, COMPLETE}``. A folder without the
``COMPLETE`` marker, or still carrying a ``.tmp`` name, is never taken for a good checkpoint.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from raft_diffusion.core import faults
from raft_diffusion.core.atomic import with_path
from raft_diffusion.errors import ConfigError, RunError

log = logging.getLogger(__name__)
_NAME = re.compile(r"^round-(\d{4,})$")
MARKER = "COMPLETE"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def checkpoint_dir(ckpt_root: Path, round_index: int) -> Path:
    """The folder of checkpoint ``round_index``: ``round-0003``."""
    return Path(ckpt_root) / f"round-{round_index:04d}"


def save_checkpoint(ckpt_root: Path, round_index: int, state: dict[str, Any], loop_state: dict[str, Any], keep: int | None = None,
                    protect: int | None = None) -> Path:
    """Write checkpoint ``round_index`` atomically and prune to the newest ``keep`` (None keeps all),
    sparing round ``protect`` (the best round, whose weights the run ends with)."""
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = checkpoint_dir(ckpt_root, round_index)
    tmp = ckpt_root / f".round-{round_index:04d}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        _write_files(tmp, state, loop_state, final)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:  # a full disk, a failure: no temporary folder is left behind (SIGKILL leaves one)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(ckpt_root)
    if keep is not None:
        for old in list_checkpoints(ckpt_root)[:-keep]:
            if protect is None or old != checkpoint_dir(ckpt_root, protect):
                shutil.rmtree(old, ignore_errors=True)
    return final


def _write_files(tmp: Path, state: dict[str, Any], loop_state: dict[str, Any], final: Path) -> None:
    """state.pt, loop.json and the marker into ``tmp`` (each fsynced); an OSError names the file as it
    would be in ``final``, the checkpoint's folder once complete."""
    buf = io.BytesIO()
    torch.save(state, buf)  # serialised in memory: a write that fails surfaces as an OSError naming the file
    files = (("state.pt", buf.getbuffer()), ("loop.json", json.dumps(loop_state).encode("utf-8")), (MARKER, b"ok\n"))
    for name, data in files:
        try:
            with open(tmp / name, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            raise with_path(exc, final / name) from None
        if name == "state.pt":
            faults.point("checkpoint")
    _fsync_dir(tmp)


def best_to_restore(ckpt_root: Path, rows: list[dict[str, Any]]) -> Path | None:
    """The checkpoint of the run's best round (``best_round`` of the last metrics row) when that is
    not the last round and its checkpoint is there (pruning spares it), else None."""
    best = rows[-1].get("best_round") if rows else None
    if best is None or best == rows[-1]["round"]:
        return None
    path = checkpoint_dir(ckpt_root, best)
    return path if (path / "state.pt").is_file() else None


def list_checkpoints(ckpt_root: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not ckpt_root.is_dir():
        return []
    found = []
    for p in ckpt_root.iterdir():
        m = _NAME.match(p.name)
        if m and p.is_dir() and (p / MARKER).is_file() and (p / "state.pt").is_file():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def clean_partial(ckpt_root: Path) -> None:
    """Remove temporary checkpoint folders left by a killed write."""
    if ckpt_root.is_dir():
        for p in ckpt_root.glob(".round-*.tmp-*"):
            shutil.rmtree(p, ignore_errors=True)


def resolve_resume(run_dir: Path, resume: str | bool) -> Path | None:
    """The checkpoint to resume from: ``True``/"latest" -> newest complete one (None if none), or a path."""
    if resume in (False, None, "", "no", "false"):
        return None
    if resume in (True, "latest", "true", "yes"):
        ckpts = list_checkpoints(run_dir / "checkpoints")
        return ckpts[-1] if ckpts else None
    path = Path(str(resume))
    if not path.is_absolute() and not path.exists():
        path = run_dir / "checkpoints" / str(resume)
    if not (path / MARKER).is_file():
        raise ConfigError(
            f"--resume {resume!r} is not a complete checkpoint folder (no {MARKER} marker); "
            f"use --resume latest or one of {[p.name for p in list_checkpoints(run_dir / 'checkpoints')]}"
        )
    return path


class DamagedCheckpoint(RunError):
    """A checkpoint folder whose files cannot be read back (truncated, partial, not ours)."""


LOOP_KEYS = ("next_round", "stream", "history", "rng")


def load_checkpoint(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(backend state, loop state) of a checkpoint folder; :class:`DamagedCheckpoint` when either file
    is truncated, partial or malformed."""
    try:
        state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a truncated zip, a partial pickle, a missing file
        raise DamagedCheckpoint(f"{path / 'state.pt'} cannot be read ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    try:
        with open(path / "loop.json", encoding="utf-8") as fh:
            loop_state = json.load(fh)
    except (OSError, ValueError) as exc:
        raise DamagedCheckpoint(f"{path / 'loop.json'} cannot be read ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict):
        raise DamagedCheckpoint(f"{path / 'state.pt'} holds {type(state).__name__}, not a state dict")
    missing = [k for k in LOOP_KEYS if not isinstance(loop_state, dict) or k not in loop_state]
    if missing:
        raise DamagedCheckpoint(f"{path / 'loop.json'} lacks {', '.join(missing)}")
    m = _NAME.match(path.name)
    if m and int(loop_state["next_round"]) != int(m.group(1)) + 1:
        raise DamagedCheckpoint(f"{path / 'loop.json'} says next round {loop_state['next_round']}, "
                                f"not {int(m.group(1)) + 1} as the folder's name says")
    return state, loop_state


def load_for_resume(run_dir: Path, resume: str | bool) -> tuple[Path, dict[str, Any], dict[str, Any]] | None:
    """(folder, backend state, loop state) to resume from; None when there is no checkpoint yet.

    ``latest``: the newest checkpoint that reads back; a damaged newer one (truncated ``state.pt``,
    partial ``loop.json``) is skipped with a warning. A checkpoint named explicitly must read back.
    """
    path = resolve_resume(run_dir, resume)
    if path is None:
        return None
    if resume not in (True, "latest", "true", "yes"):
        try:
            return (path, *load_checkpoint(path))
        except DamagedCheckpoint as exc:
            names = [p.name for p in list_checkpoints(run_dir / "checkpoints") if p != path]
            raise ConfigError(f"--resume {str(resume)!r}: the checkpoint is damaged ({exc}); "
                              f"use --resume latest or another checkpoint ({', '.join(names) or 'none'})") from None
    candidates = list_checkpoints(run_dir / "checkpoints")[::-1]
    first_error = None
    for ckpt in candidates:
        try:
            return (ckpt, *load_checkpoint(ckpt))
        except DamagedCheckpoint as exc:
            first_error = first_error or exc
            log.warning("checkpoint %s is damaged (%s); falling back to the one before it", ckpt.name, exc)
    raise RunError(
        f"no checkpoint in {str(run_dir / 'checkpoints')!r} can be read ({first_error}); "
        "start again with --overwrite or a new --output.dir"
    )
