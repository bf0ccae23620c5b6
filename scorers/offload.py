"""Scorer offload (``model.offload``): the scorer's weights stay on the CPU between rounds.

:func:`offloaded` parks every offload-capable part of a scorer on the CPU and wraps it in an
:class:`OffloadedScorer`, which moves it to its own device (the one it was built for) for each
call and back to the CPU afterwards, also when the call raises. Composite scorers (``multi``,
:class:`~scorers.common.ValidatedScorer`, :class:`~scorers.custom.CallableScorer`) have their
parts wrapped in place. Scorers without weights, or whose device is the CPU, are returned as
they are. A part is offload-capable when it sets ``supports_offload = True`` and implements
``device`` (where it is now), ``to(device)`` and optionally ``home_device`` (the device it was
built for, default ``device``): the CLIP-based built-ins (aesthetic, clip-score, PickScore, HPSv2,
the miniworld CLIP and aesthetic scorers).

Shared CLIP backbones (:func:`scorers.backbones.shared_backbone`) move with the scorer that uses
them and keep their ``home_device``, so two scorers sharing one (a reward and an eval scorer)
are both wrapped and each brings it back to the CPU after scoring.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import torch

log = logging.getLogger(__name__)
CPU = torch.device("cpu")


class OffloadedScorer:
    """``scorer`` on the CPU, on ``device`` (default: its own device) only while it scores."""

    def __init__(self, scorer: Any, device: str | torch.device | None = None) -> None:
        self.scorer = scorer
        self.device = torch.device(device) if device is not None else home_device(scorer)
        self.name = getattr(scorer, "name", type(scorer).__name__)
        scorer.to(CPU)

    def __call__(self, outputs: Any, prompts: Sequence[str], metadata: Sequence[dict[str, Any]] | None = None) -> torch.Tensor:
        self.scorer.to(self.device)
        try:
            return self.scorer(outputs, prompts, metadata)
        finally:
            self.scorer.to(CPU)

    def load(self) -> "OffloadedScorer":
        """Load the weights (on the CPU, where the scorer is parked)."""
        if hasattr(self.scorer, "load"):
            self.scorer.load()
        return self

    def __getattr__(self, name: str) -> Any:
        if name == "scorer":  # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.scorer, name)

    def __repr__(self) -> str:
        return f"OffloadedScorer({self.scorer!r}, device={self.device})"


def home_device(scorer: Any) -> torch.device:
    """The device an offload-capable scorer was built to score on."""
    return torch.device(getattr(scorer, "home_device", None) or scorer.device)


def offloaded(scorer: Any) -> Any:
    """``scorer`` with its weights parked on the CPU between calls (see the module doc)."""
    from scorers.common import ValidatedScorer
    from scorers.custom import CallableScorer
    from scorers.multi import MultiScorer

    if isinstance(scorer, OffloadedScorer):
        return scorer
    if getattr(scorer, "supports_offload", False):
        if home_device(scorer).type == "cpu":
            return scorer
        log.debug("offloading scorer %s (scores on %s)", getattr(scorer, "name", scorer), home_device(scorer))
        return OffloadedScorer(scorer)
    if isinstance(scorer, MultiScorer):
        scorer.components = [(label, offloaded(part), weight) for label, part, weight in scorer.components]
    elif isinstance(scorer, ValidatedScorer):
        scorer.scorer = offloaded(scorer.scorer)
    elif isinstance(scorer, CallableScorer) and not scorer.per_sample:  # per sample: one move per image
        scorer.fn = offloaded(scorer.fn)
    else:
        log.debug("scorer %s has no weights to offload; left as it is", getattr(scorer, "name", scorer))
    return scorer
