"""raft-diffusion: RAFT (Reward rAnked FineTuning) for diffusion models and causal LMs.

Heavy modules (torch, diffusers) load lazily, so ``import raft_diffusion`` is cheap.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "RaftConfig": "raft_diffusion.config",
    "load_config": "raft_diffusion.config",
    "train": "raft_diffusion.api",
    "generate": "raft_diffusion.generate",
    "History": "raft_diffusion.core.records",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'raft_diffusion' has no attribute {name!r}")
