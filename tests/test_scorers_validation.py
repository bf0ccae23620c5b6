"""Every scorer's output is checked: shape (N,), finite, float32; errors name the scorer."""

from __future__ import annotations

import sys
import types

import pytest
import torch

import scorers
from raft_diffusion.errors import ScorerError
from scorers.common import BaseScorer, ValidatedScorer, validated

IMAGES = torch.rand(3, 3, 8, 8)
PROMPTS = ["a", "a", "b"]


class Bad(BaseScorer):
    def __init__(self, out):
        super().__init__("bad-scorer", batch_size=8)
        self.out = out

    def score_batch(self, outputs, prompts, metadata):
        return self.out


@pytest.mark.parametrize("out, match", [
    (torch.tensor([1.0, float("nan"), 0.0]), "non-finite"),
    (torch.tensor([1.0, float("inf"), 0.0]), "non-finite"),
    (torch.zeros(3, 2), "shape"),
    (torch.zeros(2), "shape"),
    ("nope", "returned str"),
])
def test_bad_outputs_rejected_naming_scorer(out, match):
    with pytest.raises(ScorerError, match=match) as err:
        Bad(out)(IMAGES, PROMPTS, None)
    assert "bad-scorer" in str(err.value)
    with pytest.raises(ScorerError, match=match) as err:
        ValidatedScorer(lambda o, p, m: out, "wrapped-bad")(IMAGES, PROMPTS, [{}] * 3)
    assert "wrapped-bad" in str(err.value)


def test_good_output_is_float32_cpu():
    r = Bad(torch.tensor([1, 2, 3], dtype=torch.float64))(IMAGES, PROMPTS, None)
    assert r.dtype == torch.float32 and r.shape == (3,)
    r = validated(lambda o, p, m: [1, 2, 3], "list")(IMAGES, PROMPTS, None)
    assert r.tolist() == [1.0, 2.0, 3.0]


def test_internal_batching_and_no_grad():
    seen = []

    class Rec(BaseScorer):
        def score_batch(self, outputs, prompts, metadata):
            seen.append((outputs.shape[0], torch.is_grad_enabled(), list(prompts)))
            return outputs.mean(dim=(1, 2, 3))

    x = torch.rand(5, 3, 4, 4, requires_grad=True)
    r = Rec("rec", batch_size=2)(x, list("abcde"), None)
    assert [s[0] for s in seen] == [2, 2, 1] and not any(s[1] for s in seen)
    assert [p for s in seen for p in s[2]] == list("abcde")
    torch.testing.assert_close(r, x.detach().mean(dim=(1, 2, 3)))


def test_input_checks():
    s = Bad(torch.zeros(3))
    with pytest.raises(ScorerError, match="3 outputs, 2 prompts"):
        s(IMAGES, ["a", "b"], None)
    with pytest.raises(ScorerError, match=r"\(N, 3, H, W\)"):
        s(torch.rand(3, 8, 8), PROMPTS, None)


def test_registry_lists_builtins_and_unknown_name():
    names = scorers.available()
    for n in ("aesthetic-v2", "aesthetic-v1", "clip-score", "clip-score-hf", "pickscore", "hpsv2", "hpsv2.1",
              "imagereward", "text-reward-model", "text-pipeline", "text-function", "text-length",
              "text-contains", "multi", "jpeg-compressibility"):
        assert n in names
    assert all(d for _, d in scorers.describe())
    with pytest.raises(ScorerError, match="known scorers"):
        scorers.build("no-such-scorer")


def test_imagereward_missing_package_and_tensor_path(monkeypatch):
    monkeypatch.setitem(sys.modules, "ImageReward", None)
    s = scorers.build("imagereward", device="cpu")
    with pytest.raises(ScorerError, match="pip install image-reward"):
        s(IMAGES, PROMPTS, None)

    class FakeTok:
        def __call__(self, prompts, **kw):
            assert kw["max_length"] == 35
            n = len(prompts)
            return types.SimpleNamespace(input_ids=torch.ones(n, 35, dtype=torch.long),
                                         attention_mask=torch.ones(n, 35, dtype=torch.long))

    class FakeModel(torch.nn.Module):
        blip = types.SimpleNamespace(tokenizer=FakeTok())

        def score_gard(self, ids, mask, image):
            assert image.shape[1:] == (3, 224, 224)
            return image.mean(dim=(1, 2, 3)).unsqueeze(1)

    fake = types.ModuleType("ImageReward")
    fake.load = lambda name, **kw: FakeModel()
    monkeypatch.setitem(sys.modules, "ImageReward", fake)
    r = scorers.build("imagereward", device="cpu")(torch.rand(2, 3, 64, 64), ["x", "y"], None)
    assert r.shape == (2,) and r.dtype == torch.float32
