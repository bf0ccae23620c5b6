"""Tiny random pipelines of every model family, built offline in seconds (tests, trials, CI).

``pretrained: tiny`` loads the SD one; ``tiny-<family>`` (e.g. ``tiny-sdxl``) another family's.
Each family builds its own in ``build_tiny``; they are saved with ``save_pretrained`` and loaded
back with the pipeline class's real ``from_pretrained``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from raft_diffusion.training import cached_folder


def build_tiny_pipeline(seed: int = 0, sample_size: int = 16, family: str = "sd") -> Any:
    """A tiny random pipeline of ``family`` (its ``build_tiny``); SD images are ``sample_size * 2`` pixels."""
    from raft_diffusion.diffusion.families import get_family

    return get_family(family).build_tiny(seed=seed, sample_size=sample_size)


def write_tiny_pipeline(out_dir: str | Path, seed: int = 0, sample_size: int = 16, family: str = "sd") -> Path:
    """Save :func:`build_tiny_pipeline` to ``out_dir`` (safetensors) and return the folder."""
    out = Path(out_dir)
    build_tiny_pipeline(seed, sample_size, family).save_pretrained(out, safe_serialization=True)
    return out


def tiny_pipeline_dir(family: str = "sd", cache_dir: str | Path | None = None) -> Path:
    """A cached tiny pipeline folder of ``family`` (built once per cache dir): what ``tiny`` loads."""
    name = "tiny-sd-v1" if family == "sd" else f"tiny-{family}-v1"
    return cached_folder(name, "model_index.json", lambda out: write_tiny_pipeline(out, family=family), cache_dir)
