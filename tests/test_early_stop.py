"""Early stopping on a held-out scorer, best-round selection, the summary, fixed-seed eval images and
the before/after grid."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from raft_diffusion.api import build_loop, train
from raft_diffusion.config import RaftConfig
from raft_diffusion.core.early_stop import decide
from raft_diffusion.errors import ConfigError
from tests.fakes import TINY_BASE

#: the falling guard's readings, one per eval round (round 0 = before training)
READINGS = [10.0, 9.9, 10.2, 8.0, 7.0, 6.0]


class FallingGuard:
    """A held-out 'scorer' whose reading per eval round follows READINGS (it counts its calls)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, images, prompts, metadata):
        value = READINGS[min(self.calls, len(READINGS) - 1)]
        self.calls += 1
        return torch.full((len(prompts),), value)


def config(pipe_dir, out_dir, **overrides):
    return RaftConfig().replace({
        **TINY_BASE, "model.pretrained": str(pipe_dir), "raft.rounds": 5, "raft.k": 2, "raft.prompts_per_round": 2,
        "raft.eval_samples_per_prompt": 1, "sampling.steps": 2, "sampling.batch_size": 4, "train.steps_per_round": 2,
        "train.batch_size": 2, "train.learning_rate": 1e-2, "prompts.eval": "cifar10", "prompts.eval_limit": 2,
        "reward.eval_scorers": {"tests.test_early_stop:FallingGuard": {}}, "output.dir": str(out_dir), **overrides,
    })


def test_decide_guard_tolerance_best_round_and_patience():
    evals = [{"round": r, "g": v, "r": w} for r, (v, w) in enumerate([(10.0, 1.0), (9.9, 1.2), (10.2, 1.1), (9.6, 1.5)])]
    rows = [{"round": r, "reward_unbiased": v} for r, v in zip(range(1, 4), [1.0, 2.0, 1.5])]
    d = decide(evals, rows, "g", tolerance=0.05)
    assert d.best_round == 2 and d.stop_reason is None, "9.6 is within 5% of 10; without a reward: the best guard"
    assert decide(evals, rows, "g", tolerance=0.05, reward="r").best_round == 3, "the best reward the guard allows"
    assert decide(evals, rows, "g", tolerance=0.03, reward="r").best_round == 1, "round 3 falls outside 3%"
    d = decide(evals, rows, "g", tolerance=0.03)
    assert d.stop_reason and "g fell to 9.6 at round 3" in d.stop_reason
    assert decide(evals, rows, None, patience=2).stop_reason is None, "one round since the best train reward"
    late = rows + [{"round": 4, "reward_unbiased": 1.9}]
    assert "has not improved for 2 rounds (best 2 at round 2)" in decide(evals, late, None, patience=2).stop_reason
    guard_best = decide(evals, rows, "g", tolerance=0.05, reward="r", best_by="guard")
    assert guard_best.best_round == 2, "best by the guard: its highest reading, whatever the reward"
    negative = [{"round": 0, "g": -2.0}, {"round": 1, "g": -2.2}]
    assert decide(negative, rows[:1], "g", 0.05).stop_reason, "a negative start falls by |start| * tolerance"


def test_the_guard_stops_the_run_and_the_final_lora_is_the_best_round(tiny_pipeline_dir, tmp_path):
    run = tmp_path / "run"
    cfg = config(tiny_pipeline_dir, run, **{"raft.early_stop": "tests.test_early_stop:FallingGuard",
                                            "output.keep_checkpoints": None})
    history = train(cfg, progress=False)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2, 3], "8.0 at round 3 is more than 5% below 10: stop there"
    assert rows[-1]["stop_reason"].startswith("tests.test_early_stop:FallingGuard fell to 8 at round 3")
    evals = {e["round"]: e for e in history.evals}
    reward = "jpeg-compressibility"
    best = max((1, 2), key=lambda r: (evals[r][reward], -r))  # round 3 fell outside the tolerance
    assert rows[-1]["best_round"] == best and rows[0]["best_round"] == 1
    summary = json.loads((run / "summary.json").read_text())
    assert summary["best_round"] == best and summary["stop_reason"] == rows[-1]["stop_reason"]
    assert summary["fidelity_before"] == pytest.approx(10.0)
    assert summary["fidelity_after"] == pytest.approx(READINGS[best]) and summary["reward_after"] == evals[best][reward]
    final = load_file(run / "pytorch_lora_weights.safetensors")
    saved = load_file(run / "best" / "pytorch_lora_weights.safetensors")
    assert final.keys() == saved.keys() and all(torch.equal(final[k], saved[k]) for k in final)
    last = torch.load(run / "checkpoints" / "round-0003" / "state.pt", weights_only=False)["lora"]
    best_ckpt = torch.load(run / "checkpoints" / f"round-{best:04d}" / "state.pt", weights_only=False)["lora"]
    assert not all(torch.equal(last[k], best_ckpt[k]) for k in last), "round 3 trained further"
    assert len(history.rounds) == 3

    # resume across the stop: nothing runs again, the weights stay the best round's
    again = train(cfg.replace({"output.resume": "latest"}), progress=False)
    assert [r["round"] for r in again.rounds] == [1, 2, 3]
    after = load_file(run / "pytorch_lora_weights.safetensors")
    assert all(torch.equal(after[k], final[k]) for k in final)


def test_best_by_guard_keeps_the_round_the_guard_reads_highest(tiny_pipeline_dir, tmp_path):
    run = tmp_path / "run"
    cfg = config(tiny_pipeline_dir, run, **{"raft.rounds": 3, "raft.early_stop": "tests.test_early_stop:FallingGuard",
                                            "raft.early_stop_best": "guard", "raft.early_stop_tolerance": 1.0,
                                            "output.keep_checkpoints": 1})
    loop = build_loop(cfg, progress=False)
    loop.run()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    best = max((1, 2, 3), key=lambda r: (READINGS[r], -r))
    assert [r["best_round"] for r in rows] == [1, 2, 2] and best == 2, "10.2 at round 2, then 8.0"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["best_round"] == best and summary["fidelity_after"] == pytest.approx(READINGS[best])
    final = load_file(run / "pytorch_lora_weights.safetensors")
    saved = load_file(run / "best" / "pytorch_lora_weights.safetensors")
    assert all(torch.equal(final[k], saved[k]) for k in final), "the final weights are round 2's"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["round-0002", "round-0003"], "pruning spares the best"
    best_lora = torch.load(run / "checkpoints" / "round-0002" / "state.pt", weights_only=False)["lora"]
    last_lora = torch.load(run / "checkpoints" / "round-0003" / "state.pt", weights_only=False)["lora"]
    memory = loop.backend.state_dict()["lora"]
    assert all(torch.equal(memory[k], best_lora[k]) for k in best_lora), "the model in memory is round 2's too"
    assert not all(torch.equal(memory[k], last_lora[k]) for k in last_lora)


def test_eval_images_and_before_after_grid(tiny_pipeline_dir, tmp_path):
    from PIL import Image

    run = tmp_path / "run"
    train(config(tiny_pipeline_dir, run, **{"raft.rounds": 2}), progress=False)
    for r in (0, 1, 2):
        folder = run / "eval" / f"round-{r:04d}"
        scores = json.loads((folder / "scores.json").read_text())
        assert scores["ids"] == ["eval-p0-k0", "eval-p1-k0"] and set(scores["scores"]) == {
            "jpeg-compressibility", "tests.test_early_stop:FallingGuard"}
        assert all((folder / f"{i}.png").is_file() for i in scores["ids"])
    # the same prompts and seeds every eval round: the untrained round-0 images are those of a fresh base model
    grid = Image.open(run / "before_after.png")
    assert grid.size[0] >= 4 * 160, "two pairs side by side"


def test_early_stop_config_errors(tiny_pipeline_dir, tmp_path):
    with pytest.raises(ConfigError, match=r"raft.early_stop 'nope' is not a held-out scorer of this run; name one of reward.eval_scorers"):
        config(tiny_pipeline_dir, tmp_path, **{"raft.early_stop": "nope"})
    with pytest.raises(ConfigError, match="raft.early_stop_patience must be >= 1"):
        config(tiny_pipeline_dir, tmp_path, **{"raft.early_stop_patience": 0})
    with pytest.raises(ConfigError, match="raft.early_stop_best must be 'reward' or 'guard', got 'best'"):
        config(tiny_pipeline_dir, tmp_path, **{"raft.early_stop_best": "best"})


def test_diverging_names_held_out_scorers_that_fall_while_the_reward_rises():
    from raft_diffusion.core.early_stop import diverging

    evals = [{"round": 0, "r": 1.0, "clip": 70.0, "other": 1.0}, {"round": 1, "r": 1.5, "clip": 60.0, "other": 1.2}]
    assert diverging(evals, "r", ["clip", "other"]) == ["clip"]
    assert diverging([evals[0], {**evals[1], "r": 0.9}], "r", ["clip"]) == [], "the reward fell too: no gaming"
    assert diverging(evals[:1], "r", ["clip"]) == [] and diverging(evals, "r", []) == []


def test_diverging_reads_a_multi_rewards_parts():
    from raft_diffusion.core.early_stop import diverging

    evals = [{"round": 0, "multi": 0.0, "multi/clip": 50.0, "multi/shape": 0.1, "judge": 0.5},
             {"round": 2, "multi": 0.0, "multi/clip": 60.0, "multi/shape": 0.0, "judge": 0.3}]
    assert diverging(evals, "multi", ["judge"]) == ["judge"], "a part rose while the judge fell"
    flat = [{**e, "multi/clip": 50.0} for e in evals]
    assert diverging(flat, "multi", ["judge"]) == [], "no reading of the reward rose"
    assert diverging(evals, "multi2", ["judge"]) == [], "another reward's parts are not this one's"
