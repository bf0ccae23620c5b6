"""Prompt fidelity in the miniworld: does the tiny CLIP name the prompted shape and colour?

:class:`FidelityScorer` is a scorer (``(images, prompts, metadata) -> (N,)``): per image
``(shape correct + colour correct) / 2`` in {0, 0.5, 1}, with the shape and colour read from the
prompt text. Zero-shot over every colour/shape pair (out-of-domain ones included).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Sequence

import torch

from scorers.base import check_images


class FidelityScorer:
    """Zero-shot shape/colour correctness with the miniworld CLIP (loaded lazily, once)."""

    needs_prompts = True

    def __init__(self, clip_dir: str | Path | None = None, part: str = "both") -> None:
        if part not in ("both", "shape", "colour"):
            from raft_diffusion.errors import ScorerError

            raise ScorerError(f"miniworld-fidelity part must be 'both', 'shape' or 'colour', got {part!r}")
        self.clip_dir = clip_dir
        self.part = part
        self.name = "miniworld-fidelity"
        self._zs = None

    def _zero_shot(self):
        if self._zs is None:
            from raft_diffusion.miniworld import clip_path, common
            from raft_diffusion.miniworld.evaluate import load_clip

            self._zs = common.ZeroShot(*load_clip(self.clip_dir or clip_path()))
        return self._zs

    def correctness(self, images: torch.Tensor, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(shape correct, colour correct) as float tensors (N,) of 0/1."""
        from raft_diffusion.miniworld import world

        colours, shapes = self._zero_shot().predict(check_images(images, self.name).float().cpu())
        want = [world.parse_prompt(p) for p in prompts]
        shape_ok = torch.tensor([float(s == w[1]) for s, w in zip(shapes, want)])
        colour_ok = torch.tensor([float(c == w[0]) for c, w in zip(colours, want)])
        return shape_ok, colour_ok

    def __call__(self, outputs: torch.Tensor, prompts: Sequence[str], metadata: Sequence[dict[str, Any]]) -> torch.Tensor:
        shape_ok, colour_ok = self.correctness(outputs, prompts)
        if self.part == "shape":
            return shape_ok
        if self.part == "colour":
            return colour_ok
        return (shape_ok + colour_ok) / 2


@functools.lru_cache(maxsize=1)
def shared_scorer() -> FidelityScorer:
    """One :class:`FidelityScorer` on the committed miniworld CLIP for the whole process (the
    ranking filter and the experiments' evaluations), so the CLIP is loaded once."""
    return FidelityScorer()


def faithful(samples: Any, rewards: Sequence[float]) -> list[bool]:
    """A ranking filter (``ranking.filter: raft_diffusion.miniworld.fidelity:faithful``): keep the
    images in which the miniworld CLIP names both the prompted shape and the prompted colour.

    The paper's reward-hacking fix: the reward ranks only samples that still follow their prompt.
    """
    shape_ok, colour_ok = shared_scorer().correctness(samples.outputs, samples.texts)
    return [bool(s and c) for s, c in zip(shape_ok.tolist(), colour_ok.tolist())]
