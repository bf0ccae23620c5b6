"""The scorer interface and the output check every scorer passes through.

A scorer is any callable ``scorer(outputs, prompts, metadata) -> torch.Tensor``:

- ``outputs``: images as a float tensor of shape (N, 3, H, W) in [0, 1] (image scorers), or a
  list of N response strings (text scorers);
- ``prompts``: list of N prompt strings; ``metadata``: list of N dicts (may be empty dicts);
- returns rewards of shape (N,), float32, finite. Higher is better.
"""

from __future__ import annotations

import math
from typing import Any, Protocol, Sequence, runtime_checkable

import torch

from raft_diffusion.errors import ScorerError


@runtime_checkable
class Scorer(Protocol):
    """Callable reward: (outputs, prompts, metadata) -> rewards (N,) float32."""

    def __call__(
        self, outputs: Any, prompts: Sequence[str], metadata: Sequence[dict[str, Any]]
    ) -> torch.Tensor: ...


def num_outputs(outputs: Any) -> int:
    """N for an image batch (N, C, H, W) or a list of responses."""
    if isinstance(outputs, torch.Tensor):
        return int(outputs.shape[0])
    return len(outputs)


def validate_rewards(rewards: Any, n: int, name: str, *, allow_nonfinite: bool = False) -> torch.Tensor:
    """Check a scorer's output and return it as a CPU float32 tensor of shape (n,).

    Raises :class:`ScorerError` naming ``name`` for a wrong type, shape, count or a non-finite value.
    ``allow_nonfinite`` passes NaN/inf through (the ranking core then decides what to do).
    """
    if isinstance(rewards, (list, tuple)):
        try:
            rewards = torch.tensor([float(r) for r in rewards], dtype=torch.float32)
        except (TypeError, ValueError) as exc:
            raise ScorerError(f"scorer {name!r} returned a list that is not numbers: {exc}") from None
    if not isinstance(rewards, torch.Tensor):
        raise ScorerError(
            f"scorer {name!r} returned {type(rewards).__name__}; it must return a torch.Tensor of shape ({n},)"
        )
    if rewards.dim() == 2 and rewards.shape[1] == 1:
        rewards = rewards[:, 0]
    if tuple(rewards.shape) != (n,):
        raise ScorerError(
            f"scorer {name!r} returned shape {tuple(rewards.shape)} for {n} samples; it must return shape ({n},)"
        )
    if rewards.is_complex() or not (rewards.is_floating_point() or rewards.dtype in (torch.int32, torch.int64)):
        raise ScorerError(f"scorer {name!r} returned dtype {rewards.dtype}; return float32 rewards")
    rewards = rewards.detach().to(device="cpu", dtype=torch.float32)
    if not allow_nonfinite:
        bad = (~torch.isfinite(rewards)).nonzero().flatten().tolist()
        if bad:
            i = bad[0]
            raise ScorerError(
                f"scorer {name!r} returned a non-finite reward {rewards[i].item()} for sample {i} "
                f"({len(bad)} of {n} non-finite); fix the scorer or set ranking.nonfinite: exclude"
            )
    return rewards


def check_images(images: Any, name: str) -> torch.Tensor:
    """Check that ``images`` is a float tensor (N, 3, H, W) in [0, 1]; returns it unchanged."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ScorerError(f"scorer {name!r} needs images as a float tensor (N, 3, H, W); got {shape}")
    if not images.is_floating_point():
        raise ScorerError(f"scorer {name!r} needs float images in [0, 1]; got dtype {images.dtype}")
    return images


def is_finite(x: float) -> bool:
    return math.isfinite(x)
