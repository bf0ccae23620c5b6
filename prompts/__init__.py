"""Prompt sets and prompt streams for RAFT rounds (pure Python, no torch).

- ``load(source, template=..., limit=...)``: a registered set (``available()``) or a
  ``.txt``/``.jsonl``/``.csv`` file -> ``list[Prompt]``.
- ``register(name, loader, description)``: add a set; ``describe()`` lists them.
- ``PromptStream(prompts, batch_size, seed=..., shuffle=...)``: seeded, resumable batches.
- ``split_eval(prompts, n_eval, seed)``: a reproducible train/eval split.
"""

from __future__ import annotations

from prompts.loader import REGISTRY, apply_template, available, describe, load, register
from prompts.split import split_eval
from prompts.stream import MAX_BATCH_SIZE, PromptStream
from prompts.types import Prompt

__all__ = [
    "MAX_BATCH_SIZE",
    "Prompt",
    "PromptStream",
    "REGISTRY",
    "apply_template",
    "available",
    "describe",
    "load",
    "register",
    "split_eval",
]
