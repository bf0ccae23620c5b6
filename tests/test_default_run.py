"""The embedded defaults: the miniworld default (a short version) and the tiny demo raise their rewards."""

from __future__ import annotations

from raft_diffusion.api import train
from raft_diffusion.config import load_config


def test_default_is_the_miniworld_and_its_reward_rises(tmp_path):
    # a short version: 2 rounds, judged on fixed in-domain eval prompts and seeds (round means are
    # not comparable: each round draws other prompts)
    cfg = load_config("default", {"raft.rounds": 2, "prompts.eval": "miniworld", "reward.eval_scorers": {},
                                  "output.dir": str(tmp_path / "run")})
    assert cfg.model.pretrained == "miniworld" and cfg.reward.scorer == "miniworld-aesthetic"
    history = train(cfg, progress=False)
    assert all(r["reward_kept"] > r["reward_mean"] for r in history.rounds)
    before, after = history.evals[0]["miniworld-aesthetic"], history.evals[-1]["miniworld-aesthetic"]
    assert after > before, (before, after)


def test_tiny_demo_raises_its_reward(tmp_path):
    cfg = load_config("tiny-demo", {"raft.rounds": 4, "output.dir": str(tmp_path / "run"), "prompts.eval": None})
    assert cfg.model.pretrained == "tiny" and cfg.reward.scorer == "jpeg-compressibility"
    history = train(cfg, progress=False)
    means = history.series("reward_mean")
    assert len(means) == 4
    # the kept set is better than the batch it came from, every round
    assert all(r["reward_kept"] > r["reward_mean"] for r in history.rounds)
    # and training on it moves the whole distribution: the last round beats the first
    assert means[-1] > means[0], means
