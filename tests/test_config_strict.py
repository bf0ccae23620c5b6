"""Configs are checked wherever they come from: repeated YAML keys, empty files, NaN/inf, optimizer
ranges, and a config changed in Python after it was built (checked again by train())."""

from __future__ import annotations

import math

import pytest

from raft_diffusion.api import train
from raft_diffusion.config import RaftConfig, TrainConfig, load_config, presets
from raft_diffusion.config_yaml import DuplicateKey, load
from raft_diffusion.errors import ConfigError


def test_a_config_changed_after_validation_is_checked_again_by_train(tmp_path):
    cfg = RaftConfig().replace({"output.dir": str(tmp_path / "run")})
    cfg.raft.k = 0
    with pytest.raises(ConfigError, match="raft.k must be >= 1"):
        train(cfg, progress=False)
    assert not (tmp_path / "run").exists(), "nothing is written for a config that fails"


@pytest.mark.parametrize("change, message", [
    (lambda c: setattr(c.raft, "k", "8"), "raft.k must be an integer, got '8'"),
    (lambda c: setattr(c.train, "learning_rate", math.nan), "train.learning_rate must be a finite number, got nan"),
    (lambda c: setattr(c.sampling, "guidance_scale", math.inf), "sampling.guidance_scale must be a finite number, got inf"),
    (lambda c: setattr(c, "raft", {"k": 3}), "raft must be a RaftSection section, got dict"),
    (lambda c: setattr(c.train, "adam_beta2", 1.0), r"train.adam_beta2 must be in \[0, 1\), got 1.0"),
    (lambda c: setattr(c.output, "save_grids", "yes"), "output.save_grids must be true or false, got 'yes'"),
])
def test_changes_made_in_python_fail_like_a_file(change, message, tmp_path):
    cfg = RaftConfig().replace({"output.dir": str(tmp_path / "run")})
    change(cfg)
    with pytest.raises(ConfigError, match=message):
        train(cfg, progress=False)


def test_a_nan_given_to_the_constructor_is_refused():
    with pytest.raises(ConfigError, match="train.weight_decay must be a finite number, got nan"):
        RaftConfig(train=TrainConfig(weight_decay=float("nan")))


def test_train_takes_a_config_object():
    with pytest.raises(ConfigError, match="train\\(\\) takes a RaftConfig"):
        train("default", progress=False)


def test_repeated_keys_name_both_lines_and_merge_keys_still_work():
    with pytest.raises(DuplicateKey) as info:
        load("model:\n  pretrained: a\nraft:\n  k: 1\n  rounds: 2\n  k: 3\n")
    assert (info.value.key, info.value.line, info.value.first) == ("k", 6, 4)
    merged = load("base: &b {k: 1, rounds: 2}\nraft:\n  <<: *b\n  k: 4\n")
    assert merged["raft"] == {"k": 4, "rounds": 2}, "a merge key may be overridden, as YAML intends"


def test_every_preset_still_loads():
    for name in presets():
        assert isinstance(load_config(name), RaftConfig), name


def test_a_comments_only_file_is_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("# raft:\n#   rounds: 5\n")
    with pytest.raises(ConfigError, match="is empty \\(no settings\\); give at least one setting"):
        load_config(path)


def test_a_folder_named_like_a_preset_does_not_shadow_it(tmp_path, monkeypatch):
    # `raft-diffusion train --output.dir default` leaves a folder ./default; the next run still finds the preset
    monkeypatch.chdir(tmp_path)
    (tmp_path / "default").mkdir()
    (tmp_path / "my-config").mkdir()
    assert load_config("default").model.pretrained == load_config(None).model.pretrained
    with pytest.raises(ConfigError, match="config file 'my-config' is a folder; give a YAML file or a preset"):
        load_config("my-config")
