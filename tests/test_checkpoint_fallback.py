"""A damaged newest checkpoint (truncated state.pt, partial loop.json, another round's loop.json) is
skipped with a warning: the run resumes from the one before it and ends with the same LoRA as a run
never interrupted. A damaged checkpoint named explicitly, or none readable, is one clear error."""

from __future__ import annotations

import logging
import shutil

import pytest
import torch
from safetensors.torch import load_file

from raft_diffusion.api import train
from raft_diffusion.config import RaftConfig
from raft_diffusion.core import checkpoint
from raft_diffusion.core.faults import RAISE_ENV
from raft_diffusion.errors import ConfigError, RunError
from tests.fakes import TINY_BASE
from tests.test_loop import make_loop


def config(pipe, out, **overrides):
    return RaftConfig().replace({
        **TINY_BASE, "model.pretrained": str(pipe), "raft.rounds": 3, "raft.k": 2, "raft.prompts_per_round": 2,
        "sampling.steps": 2, "sampling.batch_size": 4, "train.steps_per_round": 2, "train.batch_size": 2,
        "train.learning_rate": 1e-3, "output.dir": str(out), **overrides,
    })


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


DAMAGE = {
    "truncated state.pt": lambda ckpt: truncate(ckpt / "state.pt"),
    "partial loop.json": lambda ckpt: truncate(ckpt / "loop.json"),
    "empty state.pt": lambda ckpt: (ckpt / "state.pt").write_bytes(b""),
    "another round's loop.json": lambda ckpt: shutil.copyfile(ckpt.parent / "round-0001" / "loop.json", ckpt / "loop.json"),
}


@pytest.fixture(scope="module")
def reference(tiny_pipeline_dir, tmp_path_factory, one_thread):
    out = tmp_path_factory.mktemp("fallback-ref") / "run"
    train(config(tiny_pipeline_dir, out), progress=False)
    return load_file(out / "pytorch_lora_weights.safetensors")


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_newest_checkpoint_falls_back_and_ends_the_same(damage, reference, tiny_pipeline_dir, tmp_path, monkeypatch,
                                                                caplog, one_thread):
    run = tmp_path / "run"
    with monkeypatch.context() as m:  # the run fails in round 3: checkpoints of rounds 1 and 2 are on disk
        m.setenv(RAISE_ENV, "3:generate")
        with pytest.raises(RunError, match="round 3, generation"):
            train(config(tiny_pipeline_dir, run), progress=False)
    newest = run / "checkpoints" / "round-0002"
    DAMAGE[damage](newest)

    with caplog.at_level(logging.WARNING, logger="raft_diffusion"):
        history = train(config(tiny_pipeline_dir, run, **{"output.resume": "latest"}), progress=False)
    warned = [r.getMessage() for r in caplog.records if "is damaged" in r.getMessage()]
    assert warned and "round-0002" in warned[0] and "falling back" in warned[0], caplog.text
    assert [r["round"] for r in history.rounds] == [1, 2, 3]
    got = load_file(run / "pytorch_lora_weights.safetensors")
    assert got.keys() == reference.keys()
    assert all(torch.equal(got[k], reference[k]) for k in got), "the resumed run ends with another LoRA"
    _, loop_state = checkpoint.load_checkpoint(newest)  # round 2 was written again, whole
    assert loop_state["next_round"] == 3


def test_damaged_checkpoint_named_explicitly_is_refused(tmp_path):
    loop, _ = make_loop(tmp_path, rounds=2)
    loop.run()
    truncate(tmp_path / "checkpoints" / "round-0002" / "state.pt")
    again, _ = make_loop(tmp_path, rounds=2)
    with pytest.raises(ConfigError, match=r"--resume 'round-0002': the checkpoint is damaged \(.*state.pt cannot be read.*round-0001"):
        again.resume("round-0002")


def test_no_readable_checkpoint_is_one_clear_error(tmp_path):
    loop, _ = make_loop(tmp_path, rounds=2)
    loop.run()
    for ckpt in checkpoint.list_checkpoints(tmp_path / "checkpoints"):
        (ckpt / "loop.json").write_text('{"next_round": ')
    again, _ = make_loop(tmp_path, rounds=2)
    with pytest.raises(RunError, match=r"no checkpoint in .*checkpoints' can be read .*--overwrite or a new --output.dir"):
        again.resume("latest")


def test_loop_json_missing_keys_is_damaged(tmp_path):
    loop, _ = make_loop(tmp_path, rounds=1)
    loop.run()
    ckpt = tmp_path / "checkpoints" / "round-0001"
    (ckpt / "loop.json").write_text('{"next_round": 2}')
    with pytest.raises(checkpoint.DamagedCheckpoint, match="lacks stream, history, rng"):
        checkpoint.load_checkpoint(ckpt)
