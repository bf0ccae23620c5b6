"""Rewards behind one registry: ``scorers.build(name, **kwargs)`` -> a scorer callable.

Every scorer is ``scorer(outputs, prompts, metadata) -> Tensor (N,) float32``; see
:mod:`scorers.base`. Factories import heavy dependencies and load weights lazily.
"""

from __future__ import annotations

from typing import Any, Callable

from raft_diffusion.errors import ScorerError
from raft_diffusion.registry import Registry
from scorers.base import Scorer, validate_rewards

REGISTRY: Registry[Scorer] = Registry("scorer", ScorerError)


def register(name: str, factory: Callable[..., Scorer], description: str = "") -> Callable[..., Scorer]:
    """Register a scorer factory under ``name`` (duplicates are refused)."""
    return REGISTRY.register(name, factory, description)


def build(name: str, **kwargs: Any) -> Scorer:
    """Build the scorer ``name``; a "module:function" string loads a custom scorer."""
    if ":" in name and name not in REGISTRY:
        from scorers.custom import from_reference

        return from_reference(name, **kwargs)
    return REGISTRY.build(name, **kwargs)


def available() -> list[str]:
    """Registered scorer names, sorted."""
    return REGISTRY.names()


def describe() -> list[tuple[str, str]]:
    """(name, one-line description) for every registered scorer."""
    return [(e.name, e.description) for e in REGISTRY]


def _register_builtin() -> None:
    from scorers import jpeg

    register("jpeg-compressibility", jpeg.jpeg_compressibility,
             "negated JPEG size in kB at quality 95 (smaller files score higher); no weights")
    register("jpeg-incompressibility", jpeg.jpeg_incompressibility,
             "JPEG size in kB at quality 95 (larger files score higher); no weights")


_register_builtin()

__all__ = ["REGISTRY", "Scorer", "available", "build", "describe", "register", "validate_rewards"]
