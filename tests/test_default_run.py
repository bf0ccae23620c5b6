"""The embedded default (the 'default' preset): a weight-free reward rises on the tiny model."""

from __future__ import annotations

from raft_diffusion.api import train
from raft_diffusion.config import load_config


def test_default_preset_raises_its_reward(tmp_path):
    cfg = load_config("default", {"raft.rounds": 4, "output.dir": str(tmp_path / "run"), "prompts.eval": None})
    assert cfg.model.pretrained == "tiny" and cfg.reward.scorer == "jpeg-compressibility"
    history = train(cfg, progress=False)
    means = history.series("reward_mean")
    assert len(means) == 4
    # the kept set is better than the batch it came from, every round
    assert all(r["reward_kept"] > r["reward_mean"] for r in history.rounds)
    # and training on it moves the whole distribution: the last round beats the first
    assert means[-1] > means[0], means
