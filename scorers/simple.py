"""Weight-free image rewards for demos, tests and sanity checks."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from scorers.base import check_images


class Brightness:
    """Mean pixel value in [0, 1] (``target`` given: minus the distance to it). (N, 3, H, W) -> (N,)."""

    def __init__(self, target: float | None = None) -> None:
        self.target = target
        self.name = "brightness"

    def __call__(self, outputs: torch.Tensor, prompts: Sequence[str], metadata: Sequence[dict[str, Any]]) -> torch.Tensor:
        mean = check_images(outputs, self.name).float().mean(dim=(1, 2, 3))
        return mean if self.target is None else -(mean - self.target).abs()
