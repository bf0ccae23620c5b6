"""One base config: ``train``, ``train partial.yaml``, ``--help-config`` and ``--print-config`` all
start from the embedded default (``RaftConfig()``; the ``default`` preset adds only a description)."""

from __future__ import annotations

import ast
import subprocess
import sys

import yaml

from raft_diffusion.cli import main
from raft_diffusion.config import RaftConfig, load_config


def flatten(data: dict, prefix: str = "") -> dict:
    """{"raft": {"k": 4}} -> {"raft.k": 4}; ``kwargs`` and ``eval_scorers`` stay whole (they are values)."""
    out = {}
    for key, value in data.items():
        if isinstance(value, dict) and key not in ("kwargs", "eval_scorers"):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def print_config(capsys, *argv: str) -> dict:
    assert main(["train", *argv, "--print-config"]) == 0
    return flatten(yaml.safe_load(capsys.readouterr().out))


def test_default_preset_is_the_dataclass_defaults():
    preset, base = flatten(load_config("default").to_dict()), flatten(RaftConfig().to_dict())
    assert preset.pop("description") and base.pop("description") == ""
    assert preset == base


def test_partial_file_keeps_the_embedded_default_model_and_reward(capsys, tmp_path):
    partial = tmp_path / "partial.yaml"
    partial.write_text("raft:\n  rounds: 5\n", encoding="utf-8")
    embedded = print_config(capsys)  # `raft-diffusion train` with no config
    cfg = load_config(partial)
    assert cfg.raft.rounds == 5 != embedded["raft.rounds"]
    assert cfg.model.pretrained == embedded["model.pretrained"]
    assert cfg.reward.scorer == embedded["reward.scorer"]
    from_cli = print_config(capsys, str(partial))
    assert from_cli == flatten(cfg.to_dict())
    differing = {k for k in from_cli if from_cli[k] != embedded[k]}
    assert differing <= {"raft.rounds", "description"}, differing


def test_help_config_shows_the_defaults_print_config_resolves(capsys):
    assert main(["train", "--help-config"]) == 0
    lines = capsys.readouterr().out.splitlines()
    documented = {}
    for line in lines:
        if line and not line.startswith(" "):
            name, _, default = line.partition(" = ")
            documented[name] = ast.literal_eval(default)
    embedded = print_config(capsys)
    assert set(documented) == set(embedded)
    differing = {k: (documented[k], embedded[k]) for k in documented if documented[k] != embedded[k]}
    assert set(differing) <= {"description"}, differing


def test_config_does_not_import_the_miniworld():
    code = ("import sys; from raft_diffusion.config import RaftConfig, load_config; RaftConfig(); load_config('default'); "
            "assert not [m for m in sys.modules if m.startswith('raft_diffusion.miniworld')], 'miniworld imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
