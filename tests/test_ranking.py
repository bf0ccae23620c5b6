"""The ranking core: strategies, ties, non-finite rewards, the filter hook, scale invariance."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raft_diffusion.core import ranking
from raft_diffusion.core.ranking import first_of_group, group_ids, select
from raft_diffusion.errors import ConfigError, RankingError

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)


@st.composite
def batches(draw):
    b = draw(st.integers(1, 8))
    k = draw(st.integers(1, 6))
    rewards = draw(st.lists(finite, min_size=b * k, max_size=b * k))
    return rewards, group_ids(b, k), b, k


def test_core_imports_neither_diffusers_nor_transformers():
    import subprocess
    import sys

    code = (
        "import sys, raft_diffusion.core.ranking, raft_diffusion.core.loop, raft_diffusion.core.records;"
        "bad=[m for m in ('diffusers','transformers') if m in sys.modules]; print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"core imported {out}"


@given(batches())
def test_per_prompt_keeps_one_maximum_per_group(batch):
    rewards, groups, b, k = batch
    sel = select(rewards, groups, "per_prompt")
    assert len(sel.kept) == b
    kept_groups = [groups[i] for i in sel.kept]
    assert sorted(kept_groups) == list(range(b))
    for i in sel.kept:
        members = [rewards[j] for j in range(len(rewards)) if groups[j] == groups[i]]
        assert rewards[i] == max(members)


@given(batches(), st.integers(1, 6))
def test_per_prompt_top_n(batch, top_n):
    rewards, groups, b, k = batch
    sel = select(rewards, groups, "per_prompt", top_n=top_n)
    assert len(sel.kept) == b * min(top_n, k)
    for g in range(b):
        members = [j for j in range(len(rewards)) if groups[j] == g]
        kept = [j for j in sel.kept if groups[j] == g]
        rest = [j for j in members if j not in kept]
        if rest:
            assert min(rewards[j] for j in kept) >= max(rewards[j] for j in rest)


@given(batches())
def test_global_keeps_highest_ceil_n_over_k(batch):
    rewards, groups, b, k = batch
    sel = select(rewards, groups, "global", k=k)
    n = len(rewards)
    assert len(sel.kept) == math.ceil(n / k)
    rest = [i for i in range(n) if i not in sel.kept]
    if rest:
        assert min(rewards[i] for i in sel.kept) >= max(rewards[i] for i in rest)


@given(batches(), st.integers(1, 10))
def test_per_prompt_then_global(batch, top_k):
    rewards, groups, b, k = batch
    sel = select(rewards, groups, "per_prompt_then_global", top_k=top_k)
    winners = select(rewards, groups, "per_prompt").kept
    assert set(sel.kept) <= set(winners)
    assert len(sel.kept) == min(top_k, b)
    dropped = [i for i in winners if i not in sel.kept]
    if dropped:
        assert min(rewards[i] for i in sel.kept) >= max(rewards[i] for i in dropped)


transforms = st.sampled_from([
    lambda x: 3.0 * x + 7.0,
    lambda x: math.atan(x / 1e5),
    lambda x: x ** 3 / 1e12,
    lambda x: -1.0 / (1.0 + math.exp(-x / 1e5)) * -1.0,
])


@given(batches(), transforms, st.sampled_from(["per_prompt", "global", "per_prompt_then_global"]))
@settings(max_examples=150)
def test_invariant_under_strictly_increasing_transform(batch, f, strategy):
    rewards, groups, b, k = batch
    # a strictly increasing map preserves order; ties stay ties only when the map is injective on them
    mapped = [f(r) for r in rewards]
    if len(set(mapped)) != len(set(rewards)):  # float rounding merged two rewards: order not preserved exactly
        return
    a = select(rewards, groups, strategy, k=k, top_k=max(1, b // 2))
    c = select(mapped, groups, strategy, k=k, top_k=max(1, b // 2))
    assert a.kept == c.kept


def test_ties_break_to_lower_index():
    sel = select([1.0, 1.0, 1.0, 0.5, 2.0, 2.0], group_ids(2, 3), "per_prompt")
    assert sel.kept == [0, 4]
    assert select([5.0] * 6, [0] * 6, "global", k=3).kept == [0, 1]


def test_nonfinite_error_names_sample_and_prompt():
    with pytest.raises(RankingError, match=r"sample 2 \(prompt 'a dog'\).*nan"):
        select([1.0, 2.0, float("nan"), 0.0], [0, 0, 1, 1], labels=["a cat", "a cat", "a dog", "a dog"])


def test_nonfinite_exclude_counts():
    sel = select([1.0, float("inf"), float("nan"), 0.0], [0, 0, 1, 1], nonfinite="exclude")
    assert sel.kept == [0, 3]
    assert sel.n_nonfinite == 2 and sel.excluded == [1, 2]


def test_filter_hook_discards_before_ranking():
    rewards = [9.0, 1.0, 8.0, 2.0]
    sel = select(rewards, [0, 0, 1, 1], keep_mask=[False, True, True, True])
    assert sel.kept == [1, 2]
    assert sel.n_filtered == 1 and sel.excluded == [0]
    # a group with every sample filtered keeps nothing
    assert select(rewards, [0, 0, 1, 1], keep_mask=[False, False, True, True]).kept == [2]


@pytest.mark.parametrize("kwargs, message", [
    ({"strategy": "best"}, "unknown ranking strategy 'best'"),
    ({"top_n": 0}, "top_n must be >= 1"),
    ({"nonfinite": "skip"}, "nonfinite must be one of"),
    ({"keep_mask": [True]}, "filter returned 1 flags for 2 samples"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(RankingError, match=message):
        select([1.0, 2.0], [0, 0], **kwargs)


def test_group_helpers():
    assert group_ids(2, 3) == [0, 0, 0, 1, 1, 1]
    assert first_of_group([0, 0, 1, 1, 2]) == [0, 2, 4]


# ------------------------------------------------------------------ the strategy registry
@pytest.fixture
def scratch_strategies(monkeypatch):
    """Register strategies without leaking them into the global registry."""
    from raft_diffusion.plugins import load_plugins

    load_plugins()  # plugins register into the global registry first, not into the copy
    monkeypatch.setattr(ranking.STRATEGIES, "_entries", dict(ranking.STRATEGIES._entries))


def _worst_per_prompt(eligible, rewards, groups, *, k, top_n, top_k):
    """A custom strategy: the lowest reward of each prompt."""
    return [min(members, key=lambda i: (rewards[i], i)) for members in ranking.by_group(eligible, groups).values()]


@given(batches(), st.integers(1, 6), st.integers(1, 10))
def test_expected_kept_is_what_select_keeps(batch, top_n, top_k):
    rewards, groups, b, k = batch
    top_n = min(top_n, k)  # the config refuses top_n > k
    for name in ranking.strategy_names():
        kept = select(rewards, groups, name, k=k, top_n=top_n, top_k=top_k).kept
        assert len(kept) == ranking.expected_kept(name, b, k, top_n, top_k), name


def test_custom_strategy_selects_validates_and_sizes_the_schedule(scratch_strategies):
    from raft_diffusion.config import RaftConfig
    from raft_diffusion.training import expected_kept_per_round

    ranking.register_strategy("worst_per_prompt", _worst_per_prompt, lambda b, k, top_n, top_k: b,
                              "the lowest reward of each prompt")
    rewards = [3.0, 1.0, 2.0, 0.5, 5.0, 4.0]
    sel = select(rewards, group_ids(2, 3), "worst_per_prompt", keep_mask=[True, False, True, True, True, True])
    assert sel.kept == [2, 3] and sel.excluded == [1]  # the filter still applies before the strategy
    assert "worst_per_prompt" in ranking.strategy_names()
    assert ("worst_per_prompt", "the lowest reward of each prompt") in [(e.name, e.description) for e in ranking.STRATEGIES]
    cfg = RaftConfig().replace({"ranking.strategy": "worst_per_prompt", "raft.prompts_per_round": 5})
    assert expected_kept_per_round(cfg) == 5 == ranking.expected_kept_per_round(cfg)


def test_duplicate_and_malformed_strategies_are_refused(scratch_strategies):
    with pytest.raises(RankingError, match="ranking strategy 'per_prompt' is already registered"):
        ranking.register_strategy("per_prompt", _worst_per_prompt, lambda b, k, top_n, top_k: b)
    with pytest.raises(RankingError, match="expected_kept must be a function"):
        ranking.register_strategy("sized", _worst_per_prompt, 4)  # type: ignore[arg-type]
    assert "sized" not in ranking.strategy_names()


def test_unknown_strategy_lists_every_known_one(scratch_strategies):
    from raft_diffusion.config import RaftConfig

    ranking.register_strategy("worst_per_prompt", _worst_per_prompt, lambda b, k, top_n, top_k: b)
    known = ranking.strategy_names()
    assert {"per_prompt", "global", "per_prompt_then_global", "worst_per_prompt"} <= set(known)
    for call, error in (
        (lambda: select([1.0, 2.0], [0, 0], "best"), RankingError),
        (lambda: ranking.expected_kept("best", 4, 2), RankingError),
        (lambda: RaftConfig().replace({"ranking.strategy": "best"}), ConfigError),
    ):
        with pytest.raises(error) as info:
            call()
        message = str(info.value)
        assert "'best'" in message and "\n" not in message
        assert all(name in message for name in known), message


def test_strategy_keeping_an_excluded_sample_is_an_error(scratch_strategies):
    ranking.register_strategy("everything", lambda eligible, rewards, groups, **kw: list(range(len(rewards))),
                              lambda b, k, top_n, top_k: b * k)
    with pytest.raises(RankingError, match="ranking strategy 'everything' kept sample 0, which is excluded"):
        select([1.0, 2.0], [0, 0], "everything", keep_mask=[False, True])
