"""Selection of the samples RAFT fine-tunes on. Pure Python: no torch, diffusers or transformers.

Only the order of rewards matters, so every strategy is invariant to any strictly increasing
transform of the rewards (the paper's scale-invariance claim). Ties break deterministically:
among equal rewards the lower sample index wins.

Strategies
- ``per_prompt``: the best ``top_n`` samples of each prompt group (the paper's main method).
- ``global``: the best ``ceil(N / k)`` samples of the whole batch (the paper's appendix variant).
- ``per_prompt_then_global``: the best of each prompt, then the global ``top_k`` of those winners
  (the authors' diffusion notebook: best of 10 per prompt, then the top 8 of the 10 winners).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from raft_diffusion.errors import RankingError

STRATEGIES = ("per_prompt", "global", "per_prompt_then_global")
NONFINITE_MODES = ("error", "exclude")


@dataclass(frozen=True)
class Selection:
    """The outcome of ranking one round.

    kept: indices of kept samples, ascending. excluded: indices removed by the filter hook or
    for a non-finite reward. ``n_filtered`` and ``n_nonfinite`` count the two causes.
    """

    kept: list[int]
    excluded: list[int] = field(default_factory=list)
    n_filtered: int = 0
    n_nonfinite: int = 0


def _order_key(rewards: Sequence[float]):
    return lambda i: (-rewards[i], i)


def select(
    rewards: Sequence[float],
    groups: Sequence[int],
    strategy: str = "per_prompt",
    *,
    k: int | None = None,
    top_n: int = 1,
    top_k: int | None = None,
    keep_mask: Sequence[bool] | None = None,
    nonfinite: str = "error",
    labels: Sequence[str] | None = None,
) -> Selection:
    """Choose the kept samples.

    Args:
        rewards: N floats (a list, or ``tensor.tolist()``).
        groups: N prompt-group ids; samples of one prompt share an id.
        strategy: one of :data:`STRATEGIES`.
        k: samples per prompt; ``global`` keeps ``ceil(N / k)`` (defaults to N / number of groups).
        top_n: ``per_prompt`` keeps this many per group (fewer where the group is smaller).
        top_k: ``per_prompt_then_global`` keeps this many winners (default: all winners).
        keep_mask: N booleans from the filter hook; False discards the sample before ranking.
        nonfinite: ``"error"`` raises on NaN/inf naming the sample and prompt; ``"exclude"`` drops
            them and counts them in :attr:`Selection.n_nonfinite`.
        labels: N prompt texts, used only to name the prompt in error messages.
    """
    rewards = [float(r) for r in rewards]
    groups = list(groups)
    n = len(rewards)
    if len(groups) != n:
        raise RankingError(f"{n} rewards but {len(groups)} group ids; pass one group id per sample")
    if strategy not in STRATEGIES:
        raise RankingError(f"unknown ranking strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if nonfinite not in NONFINITE_MODES:
        raise RankingError(f"ranking.nonfinite must be one of {NONFINITE_MODES}, got {nonfinite!r}")
    if top_n < 1:
        raise RankingError(f"ranking.top_n must be >= 1, got {top_n}")
    if top_k is not None and top_k < 1:
        raise RankingError(f"ranking.top_k must be >= 1 or unset, got {top_k}")
    if keep_mask is not None and len(keep_mask) != n:
        raise RankingError(f"filter returned {len(keep_mask)} flags for {n} samples; return one bool per sample")

    filtered = [i for i in range(n) if keep_mask is not None and not keep_mask[i]]
    filtered_set = set(filtered)
    bad = [i for i in range(n) if i not in filtered_set and not math.isfinite(rewards[i])]
    if bad and nonfinite == "error":
        i = bad[0]
        where = f" (prompt {labels[i]!r})" if labels is not None else f" (group {groups[i]})"
        raise RankingError(
            f"reward of sample {i}{where} is {rewards[i]}; {len(bad)} non-finite reward(s) in this round. "
            "Fix the scorer, or set ranking.nonfinite: exclude to drop them"
        )
    removed = filtered_set | set(bad)
    excluded = sorted(removed)
    eligible = [i for i in range(n) if i not in removed]
    key = _order_key(rewards)

    if strategy == "global":
        n_groups = len(set(groups)) or 1
        per = k if k is not None else max(1, round(n / n_groups))
        if per < 1:
            raise RankingError(f"k must be >= 1, got {per}")
        count = min(len(eligible), -(-n // per))
        kept = sorted(eligible, key=key)[:count]
    else:
        by_group: dict[int, list[int]] = {}
        for i in eligible:
            by_group.setdefault(groups[i], []).append(i)
        per_group = top_n if strategy == "per_prompt" else 1
        kept = [i for members in by_group.values() for i in sorted(members, key=key)[:per_group]]
        if strategy == "per_prompt_then_global" and top_k is not None:
            kept = sorted(kept, key=key)[:top_k]
    return Selection(sorted(kept), excluded, len(filtered), len(bad))


def group_ids(n_prompts: int, k: int) -> list[int]:
    """Group ids for N = n_prompts * k samples laid out prompt-major: [0]*k + [1]*k + ..."""
    return [p for p in range(n_prompts) for _ in range(k)]


def best_per_group(rewards: Sequence[float], groups: Sequence[int]) -> dict[int, float]:
    """The maximum finite reward of each group (groups with none are omitted)."""
    best: dict[int, float] = {}
    for r, g in zip(rewards, groups):
        r = float(r)
        if math.isfinite(r) and (g not in best or r > best[g]):
            best[g] = r
    return best


def first_of_group(groups: Iterable[int]) -> list[int]:
    """Index of the first sample of each group, in order of appearance."""
    seen: set[int] = set()
    out = []
    for i, g in enumerate(groups):
        if g not in seen:
            seen.add(g)
            out.append(i)
    return out
