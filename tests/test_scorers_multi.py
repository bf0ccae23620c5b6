"""Multi-reward: per-prompt normalisation (raw / zscore / rank), groups, invariance to a component's scale."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import scorers
from raft_diffusion.errors import ScorerError
from scorers.multi import MultiScorer, normalize, parse_components, prompt_groups


class Fixed:
    """A scorer that returns preset rewards times ``scale`` plus ``shift``."""

    def __init__(self, values, scale=1.0, shift=0.0, name="fixed"):
        self.values = torch.tensor(values, dtype=torch.float32)
        self.scale, self.shift, self.name = scale, shift, name

    def __call__(self, outputs, prompts, metadata):
        return self.values * self.scale + self.shift


def batch(k, groups):
    prompts = [f"prompt {g}" for g in range(groups) for _ in range(k)]
    return [None] * len(prompts), prompts, [{} for _ in prompts]


@st.composite
def case(draw):
    k = draw(st.integers(1, 5))
    groups = draw(st.integers(1, 4))
    n = k * groups
    ints = st.lists(st.integers(-800, 800), min_size=n, max_size=n, unique=True)
    a = [v / 8 for v in draw(ints)]
    b = [v / 8 for v in draw(ints)]
    scale = draw(st.floats(1e-3, 1e3))
    shift = draw(st.floats(-100, 100))
    w = draw(st.floats(0.1, 3.0))
    return k, groups, a, b, scale, shift, w


@settings(max_examples=60, deadline=None)
@given(case(), st.sampled_from(["zscore", "rank"]))
def test_invariant_to_scale_of_one_component(c, mode):
    k, groups, a, b, scale, shift, w = c
    outputs, prompts, metadata = batch(k, groups)
    base = MultiScorer([(Fixed(a, name="a"), 1.0), (Fixed(b, name="b"), w)], normalize=mode)
    scaled = MultiScorer([(Fixed(a, scale=scale, shift=shift, name="a"), 1.0), (Fixed(b, name="b"), w)],
                         normalize=mode)
    r0, r1 = base(outputs, prompts, metadata), scaled(outputs, prompts, metadata)
    torch.testing.assert_close(r0, r1, atol=1e-4, rtol=1e-4)
    assert r0.dtype == torch.float32 and r0.shape == (k * groups,)


def test_raw_is_weighted_sum_and_not_scale_invariant():
    outputs, prompts, metadata = batch(2, 2)
    m = MultiScorer([(Fixed([1, 2, 3, 4]), 2.0), (Fixed([0, 1, 0, 1]), -1.0)], normalize="raw")
    assert m(outputs, prompts, metadata).tolist() == [2.0, 3.0, 6.0, 7.0]
    assert list(m.last_components) == ["fixed", "fixed#1"]


def test_zscore_and_rank_values():
    groups = torch.tensor([0, 0, 0, 1, 1, 1])
    r = torch.tensor([1.0, 2.0, 3.0, 5.0, 5.0, 9.0])
    z = normalize(r, groups, "zscore")
    torch.testing.assert_close(z[:3], torch.tensor([-1.224744871, 0.0, 1.224744871], dtype=torch.float64))
    assert normalize(r, groups, "rank").tolist() == [0.0, 0.5, 1.0, 0.25, 0.25, 1.0]
    assert normalize(torch.tensor([4.0, 4.0]), torch.tensor([0, 0]), "zscore").tolist() == [0.0, 0.0]
    assert normalize(torch.tensor([4.0]), torch.tensor([0]), "rank").tolist() == [0.5]


def test_groups_from_metadata_or_consecutive_prompts():
    assert prompt_groups(["a", "a", "b", "a"], [{}] * 4).tolist() == [0, 0, 1, 2]
    md = [{"group": 7}, {"group": 3}, {"group": 7}]
    assert prompt_groups(["x", "y", "z"], md).tolist() == [0, 1, 0]
    with pytest.raises(ScorerError, match="some samples but not all"):
        prompt_groups(["x", "y"], [{"group": 1}, {}])


def test_groups_change_the_result():
    r = Fixed([1.0, 2.0, 10.0, 20.0])
    outputs, prompts = [None] * 4, ["a", "a", "b", "b"]
    m = MultiScorer([(r, 1.0)], normalize="rank")
    assert m(outputs, prompts, [{}] * 4).tolist() == [0.0, 1.0, 0.0, 1.0]
    one_group = [{"group": 0}] * 4
    torch.testing.assert_close(m(outputs, prompts, one_group), torch.tensor([0, 1 / 3, 2 / 3, 1.0]))


def test_built_from_registry_names():
    m = scorers.build("multi", scorers=[{"name": "text-length", "weight": 1.0},
                                        {"name": "text-contains", "weight": 2.0, "args": {"keyword": "cat"}}],
                      normalize="raw")
    r = m(["a cat", "cat cat cat"], ["p", "p"], None)
    assert r.tolist() == [2.0 + 2.0, 3.0 + 6.0]
    assert parse_components("jpeg-compressibility:0.5,mod:fn") == [("jpeg-compressibility", 0.5, {}), ("mod:fn", 1.0, {})]
    with pytest.raises(ScorerError, match="normalize"):
        scorers.build("multi", scorers="jpeg-compressibility", normalize="softmax")


def test_component_scores_finds_a_multi_inside_wrappers():
    from scorers.common import ValidatedScorer, component_scores

    outputs, prompts, metadata = batch(2, 2)
    m = MultiScorer([(Fixed([1, 2, 3, 4], name="a"), 1.0), (Fixed([0, 1, 0, 1], name="b"), 1.0)])
    wrapped = ValidatedScorer(m, "multi")
    assert component_scores(wrapped) == {}, "nothing scored yet"
    wrapped(outputs, prompts, metadata)
    assert component_scores(wrapped) == {"a": [1.0, 2.0, 3.0, 4.0], "b": [0.0, 1.0, 0.0, 1.0]}
    assert component_scores(Fixed([1, 2, 3, 4])) == {}, "not a multi reward"
