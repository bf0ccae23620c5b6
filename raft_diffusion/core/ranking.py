"""Selection of the samples RAFT fine-tunes on. Pure Python: no torch, diffusers or transformers.

Only the order of rewards matters, so every strategy is invariant to any strictly increasing
transform of the rewards (the paper's scale-invariance claim). Ties break deterministically:
among equal rewards the lower sample index wins.

Strategies live in one registry, :data:`STRATEGIES`; each is registered once with its selection
function and the count it keeps per round (:func:`register_strategy`):

- ``per_prompt``: the best ``top_n`` samples of each prompt group (the paper's main method).
- ``global``: the best ``ceil(N / k)`` samples of the whole batch (the paper's appendix variant).
- ``per_prompt_then_global``: the best of each prompt, then the global ``top_k`` of those winners
  (the authors' diffusion notebook: best of 10 per prompt, then the top 8 of the 10 winners).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Protocol, Sequence

from raft_diffusion.errors import RankingError
from raft_diffusion.registry import Registry

NONFINITE_MODES = ("error", "exclude")


class SelectFn(Protocol):
    """A strategy's selection: the kept indices, a subset of ``eligible``, in any order.

    ``rewards`` and ``groups`` cover all N samples; ``eligible`` are those neither filtered nor
    non-finite. ``k``, ``top_n``, ``top_k`` are :func:`select`'s arguments.
    """

    def __call__(self, eligible: list[int], rewards: list[float], groups: list[int], *,
                 k: int | None, top_n: int, top_k: int | None) -> list[int]: ...


#: ``expected_kept(prompts_per_round, k, top_n, top_k) -> int``: samples a round keeps when nothing
#: is filtered (the LR schedule's length is planned from it).
ExpectedKeptFn = Callable[[int, int, int, "int | None"], int]


@dataclass(frozen=True)
class Strategy:
    """A registered strategy: calling it selects (see :class:`SelectFn`)."""

    name: str
    select: SelectFn
    expected_kept: ExpectedKeptFn

    def __call__(self, eligible: list[int], rewards: list[float], groups: list[int], *,
                 k: int | None, top_n: int, top_k: int | None) -> list[int]:
        return self.select(eligible, rewards, groups, k=k, top_n=top_n, top_k=top_k)


STRATEGIES: Registry[list[int]] = Registry("ranking strategy", RankingError, plural="ranking strategies")


def register_strategy(name: str, select: SelectFn, expected_kept: ExpectedKeptFn, description: str = "") -> Strategy:
    """Register a ranking strategy (``ranking.strategy: NAME``); duplicates are refused."""
    for what, fn in (("select", select), ("expected_kept", expected_kept)):
        if not callable(fn):
            raise RankingError(f"ranking strategy {name!r}: {what} must be a function, got {fn!r}")
    strategy = Strategy(name, select, expected_kept)
    STRATEGIES.register(name, strategy, description)
    return strategy


def strategy_names() -> list[str]:
    """Registered strategy names, sorted."""
    return STRATEGIES.names()


def get_strategy(name: str) -> Strategy:
    """The strategy ``name``; an unknown name (after loading plugins) raises with the known ones."""
    if name not in STRATEGIES:
        from raft_diffusion.plugins import load_plugins

        load_plugins()
    return STRATEGIES.entry(name).factory  # type: ignore[return-value]


def expected_kept(strategy: str, prompts_per_round: int, k: int, top_n: int = 1, top_k: int | None = None) -> int:
    """How many samples a round keeps under ``strategy`` (nothing filtered)."""
    return int(get_strategy(strategy).expected_kept(prompts_per_round, k, top_n, top_k))


def expected_kept_per_round(cfg: Any) -> int:
    """:func:`expected_kept` for a :class:`~raft_diffusion.config.RaftConfig` (the LR schedule length)."""
    r = cfg.ranking
    return expected_kept(r.strategy, cfg.raft.prompts_per_round, cfg.raft.k, r.top_n, r.top_k)


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


def ranked(indices: Iterable[int], rewards: Sequence[float]) -> list[int]:
    """``indices`` from the highest reward to the lowest; ties go to the lower index."""
    return sorted(indices, key=_order_key(rewards))


def by_group(indices: Iterable[int], groups: Sequence[int]) -> dict[int, list[int]]:
    """``indices`` split by group id, in order of first appearance."""
    out: dict[int, list[int]] = {}
    for i in indices:
        out.setdefault(groups[i], []).append(i)
    return out


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
        strategy: a name registered in :data:`STRATEGIES`.
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
    chosen = get_strategy(strategy)
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
    kept = sorted(set(chosen(eligible, rewards, groups, k=k, top_n=top_n, top_k=top_k)))
    stray = [i for i in kept if i in removed or not 0 <= i < n]
    if stray:
        raise RankingError(f"ranking strategy {strategy!r} kept sample {stray[0]}, which is excluded or out of range; "
                           "keep only indices from `eligible`")
    return Selection(sorted(kept), excluded, len(filtered), len(bad))


# ------------------------------------------------------------------ the built-in strategies
def _per_prompt(eligible: list[int], rewards: list[float], groups: list[int], *,
                k: int | None, top_n: int, top_k: int | None) -> list[int]:
    return [i for members in by_group(eligible, groups).values() for i in ranked(members, rewards)[:top_n]]


def _global(eligible: list[int], rewards: list[float], groups: list[int], *,
            k: int | None, top_n: int, top_k: int | None) -> list[int]:
    n = len(rewards)
    per = k if k is not None else max(1, round(n / (len(set(groups)) or 1)))
    if per < 1:
        raise RankingError(f"k must be >= 1, got {per}")
    return ranked(eligible, rewards)[:-(-n // per)]


def _per_prompt_then_global(eligible: list[int], rewards: list[float], groups: list[int], *,
                            k: int | None, top_n: int, top_k: int | None) -> list[int]:
    winners = _per_prompt(eligible, rewards, groups, k=k, top_n=1, top_k=None)
    return ranked(winners, rewards)[:top_k] if top_k is not None else winners


register_strategy("per_prompt", _per_prompt, lambda b, k, top_n, top_k: b * top_n,
                  "the best top_n samples of each prompt (the paper's main method)")
register_strategy("global", _global, lambda b, k, top_n, top_k: b,
                  "the best ceil(N / k) samples of the whole batch (the paper's appendix variant)")
register_strategy("per_prompt_then_global", _per_prompt_then_global, lambda b, k, top_n, top_k: min(b, top_k or b),
                  "the best of each prompt, then the global top_k of those winners (the authors' notebook)")


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
