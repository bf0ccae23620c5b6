"""SIGKILL a run during generation, training and a checkpoint write; resuming ends bit-identical."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from raft_diffusion.core.faults import ENV


def cli(pipe_dir, out_dir, *extra, kill_at=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop(ENV, None)
    if kill_at:
        env[ENV] = kill_at
    args = [
        sys.executable, "-m", "raft_diffusion", "train", "tiny-demo", "--no-progress", "--output", str(out_dir),
        "--model.pretrained", str(pipe_dir), "--raft.rounds", "3", "--raft.k", "2", "--raft.prompts_per_round", "2",
        "--sampling.steps", "2", "--sampling.batch_size", "2", "--train.steps_per_round", "3", "--train.batch_size", "2",
        "--train.learning_rate", "1e-3", "--prompts.eval", "null", *extra,
    ]
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def reference(tiny_pipeline_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    proc = cli(tiny_pipeline_dir, out)
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.mark.parametrize("phase", ["generate", "train", "checkpoint"])
def test_killed_run_resumes_to_the_same_lora(phase, reference, tiny_pipeline_dir, tmp_path):
    out = tmp_path / "run"
    killed = cli(tiny_pipeline_dir, out, kill_at=f"2:{phase}")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [r["round"] for r in rows] == [1], "only round 1 was complete when the process died"
    if phase == "checkpoint":
        assert list((out / "checkpoints").glob(".round-0002.tmp-*")), "the kill should leave a half-written checkpoint"

    resumed = cli(tiny_pipeline_dir, out, "--resume", "latest")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert not list((out / "checkpoints").glob(".round-*")), "half-written checkpoint not cleaned"
    a = load_file(reference / "pytorch_lora_weights.safetensors")
    b = load_file(out / "pytorch_lora_weights.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs after resume"
    ref_rows = [json.loads(line) for line in open(reference / "metrics.jsonl")]
    new_rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [r["kept_ids"] for r in new_rows] == [r["kept_ids"] for r in ref_rows]
    assert [r["reward_mean"] for r in new_rows] == [r["reward_mean"] for r in ref_rows]
