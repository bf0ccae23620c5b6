"""A full disk (ENOSPC injected into file writes) stops the run with one line naming the round and the
path, leaves no temporary file behind, and the run resumes to the same LoRA as an uninterrupted one."""

from __future__ import annotations

import builtins
import errno
import io
import os

import pytest
import torch
from safetensors.torch import load_file

from raft_diffusion.api import train
from raft_diffusion.cli import main
from raft_diffusion.config import RaftConfig
from raft_diffusion.core import faults
from raft_diffusion.errors import RunError
from tests.fakes import TINY_BASE


def config(pipe, out, **overrides):
    return RaftConfig().replace({
        **TINY_BASE, "model.pretrained": str(pipe), "raft.rounds": 2, "raft.k": 2, "raft.prompts_per_round": 2,
        "sampling.steps": 2, "sampling.batch_size": 4, "train.steps_per_round": 2, "train.batch_size": 2,
        "train.learning_rate": 1e-3, "prompts.eval": "cifar10", "prompts.eval_limit": 1, "output.dir": str(out), **overrides,
    })


class FullFile:
    """A file opened for writing on a full disk: every write fails as the kernel's does (no file name)."""

    def __init__(self, fh):
        self._fh = fh

    def write(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._fh.close()

    def __getattr__(self, name):
        return getattr(self._fh, name)


def fill_disk(monkeypatch, when):
    """From now on, files opened for writing whose path ``when(path)`` accepts hit a full disk."""
    real = builtins.open

    def fake_open(file, mode="r", *args, **kwargs):
        fh = real(file, mode, *args, **kwargs)
        if isinstance(file, (str, os.PathLike)) and any(c in mode for c in "wax+") and when(os.fspath(file)):
            return FullFile(fh)
        return fh

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(io, "open", fake_open)


def leftovers(run):
    """Temporary files and folders of interrupted writes anywhere in the run folder."""
    return sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.name.startswith(".") and (
        ".tmp" in p.name or p.name.startswith((".round-", ".lora-", ".adapter-")) or p.name.endswith((".best-tmp", ".old"))))


@pytest.fixture(scope="module")
def reference(tiny_pipeline_dir, tmp_path_factory, one_thread):
    out = tmp_path_factory.mktemp("full-ref") / "run"
    train(config(tiny_pipeline_dir, out), progress=False)
    return load_file(out / "pytorch_lora_weights.safetensors")


def same_lora(reference, run):
    got = load_file(run / "pytorch_lora_weights.safetensors")
    return got.keys() == reference.keys() and all(torch.equal(got[k], reference[k]) for k in got)


def round2(fragment):
    return lambda path: fragment in path.replace(os.sep, "/") and faults.current_round == 2


# (where the disk fills up, which files, the stage the message names, the file it names)
POINTS = [
    ("config.yaml", lambda p: "/.config.yaml.tmp-" in p, "round 0 (before training), writing config.yaml", "config.yaml"),
    ("checkpoint", round2("/.round-0002.tmp-"), "round 2, checkpoint", "state.pt"),
    ("metrics.jsonl", round2("/.metrics.jsonl.tmp-"), "round 2, writing metrics", "metrics.jsonl"),
    ("samples table", round2("round-0002/.samples.jsonl.tmp-"), "round 2, writing artifacts", "samples.jsonl"),
    ("round grid", round2("round-0002/.grid.png.tmp-"), "round 2, writing artifacts", "grid.png"),
    ("eval images", round2("eval/round-0002/.scores.json.tmp-"), "round 2, evaluation metrics", "scores.json"),
    ("summary.json", lambda p: "/.summary.json.tmp-" in p, "round 2, writing summary.json", "summary.json"),
    ("report", lambda p: "/.report.html.tmp-" in p, "round 2, the on_round callback", "report.html"),
    ("model card", lambda p: "/.README.md.tmp-" in p, "round 2, writing report.html and the model card", "README.md"),
]


@pytest.mark.parametrize("when, stage, name", [p[1:] for p in POINTS], ids=[p[0] for p in POINTS])
def test_full_disk_stops_cleans_up_and_resumes(when, stage, name, reference, tiny_pipeline_dir, tmp_path, monkeypatch, one_thread):
    run = tmp_path / "run"
    with monkeypatch.context() as m:
        fill_disk(m, when)
        with pytest.raises(RunError) as info:
            train(config(tiny_pipeline_dir, run), progress=False)
    message = str(info.value)
    assert message.startswith(stage), message
    assert "no space left on the device" in message and name in message and str(run) in message, message
    assert "\n" not in message
    assert leftovers(run) == [], "temporary files left behind"

    history = train(config(tiny_pipeline_dir, run, **{"output.resume": "latest"}), progress=False)
    assert [r["round"] for r in history.rounds] == [1, 2]
    assert same_lora(reference, run), "the resumed run ends with another LoRA"
    for done in ("summary.json", "report.html", "README.md", "metrics.jsonl"):
        assert (run / done).is_file(), done
    assert leftovers(run) == []


def test_full_disk_on_the_command_line_exits_1_with_one_line(tiny_pipeline_dir, tmp_path, monkeypatch, capsys, one_thread):
    run = tmp_path / "run"
    fill_disk(monkeypatch, round2("/.round-0002.tmp-"))
    code = main(["train", "tiny-demo", "--no-progress", "--output", str(run), "--model.pretrained", str(tiny_pipeline_dir),
                 "--raft.rounds", "2", "--raft.k", "2", "--raft.prompts_per_round", "1", "--sampling.steps", "1",
                 "--train.steps_per_round", "1", "--prompts.eval", "null"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("raft-diffusion: error:")]
    assert code == 1 and len(lines) == 1, err
    assert "round 2, checkpoint: no space left on the device" in lines[0] and "--resume latest" in lines[0]
    assert "Traceback" not in err
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["round-0001"]
