"""The CLI: help, error messages (one line naming the value and the fix), exit codes."""

from __future__ import annotations

import subprocess
import sys

import pytest

from raft_diffusion.cli import main, split_overrides


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_console_script_help():
    out = subprocess.run([sys.executable, "-m", "raft_diffusion", "--help"], capture_output=True, text=True, check=True).stdout
    for command in ("train", "generate", "score", "scorers", "tiny-model", "prompts"):
        assert command in out


@pytest.mark.parametrize("command", ["train", "generate", "tiny-model", "prompts"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    assert "usage: raft-diffusion" in capsys.readouterr().out


def test_split_overrides():
    rest, over = split_overrides(["train", "cfg.yaml", "--raft.k", "8", "--model.dtype=float16", "--overwrite", "--raft.seed", "-1"])
    assert rest == ["train", "cfg.yaml", "--overwrite"]
    assert over == ["--raft.k", "8", "--model.dtype=float16", "--raft.seed", "-1"]


def one_line_error(err):
    lines = [line for line in err.strip().splitlines() if line.startswith("raft-diffusion: error:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("args, expected", [
    (["train", "no-such-config.yaml"], "config file 'no-such-config.yaml' does not exist"),
    (["train", "--reward.scorer", "no-such-scorer"], "unknown scorer 'no-such-scorer'; known scorers:"),
    (["train", "--prompts.train", "no-such-set"], "unknown prompt set 'no-such-set'"),
    (["train", "--sampling.height", "250"], "sampling.height = 250 is not a positive multiple of 8"),
    (["train", "--raft.k", "0"], "raft.k must be >= 1"),
    (["train", "--raft.kk", "3"], "unknown config key 'raft.kk'; did you mean 'raft.k'?"),
    (["train", "--raft.k", "many"], "raft.k must be an integer, got 'many'"),
    (["train", "--sampling.scheduler", "magic"], "unknown sampling.scheduler 'magic'"),
    (["train", "--model.pretrained", "/no/such/folder"], "'/no/such/folder' is neither an existing folder nor a hub id"),
])
def test_bad_input_errors(args, expected, capsys, tmp_path):
    code, out, err = run_cli(capsys, *args, "--output", str(tmp_path / "run"))
    assert code == 2
    assert expected in one_line_error(err)


def test_empty_prompt_file(capsys, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n# only a comment\n")
    code, _, err = run_cli(capsys, "train", "--prompts.train", str(empty), "--output", str(tmp_path / "run"))
    assert code == 2
    line = one_line_error(err)
    assert "empty.txt" in line and "no prompts" in line


def test_print_config_round_trips(capsys, tmp_path):
    import yaml

    from raft_diffusion.config import RaftConfig

    code, out, _ = run_cli(capsys, "train", "--raft.k", "8", "--print-config")
    assert code == 0
    data = yaml.safe_load(out)
    assert data["raft"]["k"] == 8
    assert RaftConfig.from_dict(data).raft.k == 8


def test_yaml_config_file_and_override(capsys, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("raft:\n  k: 3\nsampling:\n  steps: 4\n")
    code, out, _ = run_cli(capsys, "train", str(cfg), "--sampling.steps", "5", "--print-config")
    assert code == 0
    assert "k: 3" in out and "steps: 5" in out


def test_invalid_yaml(capsys, tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("raft: [1, 2\n")
    code, _, err = run_cli(capsys, "train", str(cfg))
    assert code == 2 and "is not valid YAML" in one_line_error(err)


def test_presets_listed_and_load(capsys):
    from raft_diffusion.config import load_config, presets

    names = presets()
    assert {"sd15-aesthetic-256", "sd15-resolution-256"} <= set(names)
    for name in names:
        load_config(name)  # every preset validates
    code, out, _ = run_cli(capsys, "train", "--list-presets")
    assert code == 0 and "sd15-aesthetic-256" in out


def test_prompts_command(capsys):
    code, out, _ = run_cli(capsys, "prompts")
    assert code == 0 and "cifar10" in out and "imagenet_animals" in out


def test_tiny_model_and_generate(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "tiny-model", str(tmp_path / "pipe"))
    assert code == 0 and (tmp_path / "pipe" / "model_index.json").is_file()
    code, out, _ = run_cli(capsys, "generate", "--model", str(tmp_path / "pipe"), "--prompt", "a cat", "--steps", "2",
                           "--num-images", "2", "--out", str(tmp_path / "imgs"))
    assert code == 0 and len(list((tmp_path / "imgs").glob("*.png"))) == 2
    code, _, err = run_cli(capsys, "tiny-model", str(tmp_path / "pipe"))
    assert code == 2 and "is not an empty folder" in one_line_error(err)
    code, _, err = run_cli(capsys, "generate", "--model", str(tmp_path / "pipe"), "--prompt", "x", "--height", "30", "--out", str(tmp_path / "o"))
    assert code == 2 and "--height 30 is not a positive multiple of 8" in one_line_error(err)


def test_not_a_pipeline_folder(capsys, tmp_path):
    (tmp_path / "notpipe").mkdir()
    code, _, err = run_cli(capsys, "generate", "--model", str(tmp_path / "notpipe"), "--prompt", "x", "--out", str(tmp_path / "o"))
    assert code == 2 and "is not a diffusers pipeline folder (no model_index.json)" in one_line_error(err)


def test_backend_flag_selects_the_llm_default(capsys):
    import yaml

    code, out, _ = run_cli(capsys, "train", "--backend", "llm", "--print-config")
    data = yaml.safe_load(out)
    assert code == 0 and data["backend"] == "llm" and data["model"]["pretrained"] == "tiny-lm"
