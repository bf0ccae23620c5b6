"""Atomic round checkpoints: written under a temporary name, completed, then renamed into place.

Layout: ``RUN/checkpoints/round-0003/{state.pt, loop.json, COMPLETE}``. A folder without the
``COMPLETE`` marker, or still carrying a ``.tmp`` name, is never taken for a good checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from raft_diffusion.core import faults
from raft_diffusion.errors import ConfigError

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


def save_checkpoint(ckpt_root: Path, round_index: int, state: dict[str, Any], loop_state: dict[str, Any], keep: int | None = None) -> Path:
    """Write checkpoint ``round_index`` atomically and prune to the newest ``keep`` (None keeps all)."""
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"round-{round_index:04d}"
    tmp = ckpt_root / f".round-{round_index:04d}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    torch.save(state, tmp / "state.pt")
    faults.point("checkpoint")
    with open(tmp / "loop.json", "w", encoding="utf-8") as fh:
        json.dump(loop_state, fh)
        fh.flush()
        os.fsync(fh.fileno())
    with open(tmp / MARKER, "w") as fh:
        fh.write("ok\n")
        fh.flush()
        os.fsync(fh.fileno())
    _fsync_dir(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(ckpt_root)
    if keep is not None:
        for old in list_checkpoints(ckpt_root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


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


def load_checkpoint(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(backend state, loop state) of a checkpoint folder."""
    state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
    with open(path / "loop.json", encoding="utf-8") as fh:
        loop_state = json.load(fh)
    return state, loop_state
