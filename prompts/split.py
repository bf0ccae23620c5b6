"""``split_eval``: hold out a seeded, reproducible subset of prompts for evaluation."""

from __future__ import annotations

import random
from typing import Sequence

from prompts.types import Prompt
from raft_diffusion.errors import PromptError


def split_eval(prompts: Sequence[Prompt], n_eval: int, seed: int = 0) -> tuple[list[Prompt], list[Prompt]]:
    """(train, eval): ``n_eval`` prompts drawn with ``seed`` go to eval, the rest to train.

    Both parts keep the input order; each prompt is a copy whose metadata gains
    ``"split": "train"`` or ``"eval"``. For eval prompts from their own source, use ``load``.
    """
    items = list(prompts)
    if isinstance(n_eval, bool) or not isinstance(n_eval, int) or not 0 <= n_eval < len(items):
        raise PromptError(
            f"n_eval must be an integer from 0 to {len(items) - 1} (the set has {len(items)} prompts, "
            f"at least one stays for training), got {n_eval!r}"
        )
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise PromptError(f"split seed must be an integer, got {seed!r}")
    eval_idx = set(random.Random(f"split-{seed}").sample(range(len(items)), n_eval))
    train: list[Prompt] = []
    held: list[Prompt] = []
    for i, p in enumerate(items):
        part = "eval" if i in eval_idx else "train"
        (held if part == "eval" else train).append(Prompt(text=p.text, metadata={**p.metadata, "split": part}))
    return train, held
