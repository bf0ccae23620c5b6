"""The round loop on a pure-torch backend: rows, eval, checkpoints, exact resume, faults."""

from __future__ import annotations

import json

import pytest
import torch

import prompts
from raft_diffusion.core import checkpoint
from raft_diffusion.core.loop import LoopSettings, RaftLoop
from raft_diffusion.core.records import History
from raft_diffusion.errors import RunError, ScorerError
from tests.fakes import VectorBackend, sum_reward

PROMPTS = [prompts.Prompt(f"p{i}") for i in range(6)]


def make_loop(tmp_path, rounds=4, scorer=sum_reward, **kw):
    backend = VectorBackend()
    stream = prompts.PromptStream(PROMPTS, 3, seed=1)
    settings = LoopSettings(rounds=rounds, k=4, prompts_per_round=3, seed=5, keep_checkpoints=None, **kw)
    loop = RaftLoop(backend, scorer, stream, settings, tmp_path, scorer_name="sum", eval_prompts=PROMPTS[:2])
    return loop, backend


def test_rows_and_files(tmp_path):
    loop, backend = make_loop(tmp_path)
    history = loop.run()
    assert [r["round"] for r in history.rounds] == [1, 2, 3, 4]
    row = history.rounds[0]
    for key in ("reward_unbiased", "reward_mean", "reward_std", "reward_kept", "best_per_prompt", "n_kept",
                "time_generate_s", "time_score_s", "time_train_s", "peak_rss_mb", "kept_ids"):
        assert key in row, key
    assert row["n_kept"] == 3 and row["n_samples"] == 12
    assert row["reward_kept"] >= row["reward_mean"]
    on_disk = History.load(tmp_path)
    assert on_disk.rounds == json.loads(json.dumps(history.rounds))
    assert [e["round"] for e in history.evals] == [0, 1, 2, 3, 4]
    assert (tmp_path / "rounds" / "round-0001" / "samples.jsonl").is_file()
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path / "checkpoints")] == [f"round-000{i}" for i in range(1, 5)]
    # RAFT on sum-of-coordinates moves the mean up
    assert history.rounds[-1]["reward_unbiased"] > history.rounds[0]["reward_unbiased"]
    assert history.evals[-1]["sum"] > history.evals[0]["sum"]


def test_unbiased_reward_is_first_sample_of_each_prompt(tmp_path):
    loop, _ = make_loop(tmp_path, rounds=1)
    history = loop.run()
    rows = [json.loads(line) for line in open(tmp_path / "rounds" / "round-0001" / "samples.jsonl")]
    firsts = [r["reward"] for r in rows if r["id"].endswith("-k0")]
    assert history.rounds[0]["reward_unbiased"] == pytest.approx(sum(firsts) / len(firsts))
    kept = [r for r in rows if r["kept"]]
    for r in kept:
        assert r["reward"] == max(x["reward"] for x in rows if x["group"] == r["group"])


def test_resume_is_exact(tmp_path):
    full, b_full = make_loop(tmp_path / "full")
    full.run()
    part, _ = make_loop(tmp_path / "part", rounds=2)
    part.run()
    # simulate a process killed while writing round 3's checkpoint: a half-written temp folder
    junk = tmp_path / "part" / "checkpoints" / ".round-0003.tmp-999"
    junk.mkdir()
    (junk / "state.pt").write_bytes(b"garbage")
    resumed, b_res = make_loop(tmp_path / "part")
    assert resumed.resume("latest")
    assert resumed.next_round == 3 and not junk.exists()
    history = resumed.run()
    assert torch.equal(b_res.theta.detach(), b_full.theta.detach())
    assert [r["kept_ids"] for r in history.rounds] == [r["kept_ids"] for r in full.history.rounds]
    assert [r["reward_mean"] for r in history.rounds] == [r["reward_mean"] for r in full.history.rounds]


def test_incomplete_checkpoint_is_never_taken(tmp_path):
    loop, _ = make_loop(tmp_path, rounds=2)
    loop.run()
    (tmp_path / "checkpoints" / "round-0002" / checkpoint.MARKER).unlink()
    assert checkpoint.resolve_resume(tmp_path, "latest").name == "round-0001"


def test_keep_last_n(tmp_path):
    loop, _ = make_loop(tmp_path, rounds=4)
    loop.settings.keep_checkpoints = 2
    loop.run()
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path / "checkpoints")] == ["round-0003", "round-0004"]


def test_scorer_failure_names_round_and_keeps_completed_rounds(tmp_path):
    calls = {"n": 0}

    def flaky(outputs, prompts, metadata):
        calls["n"] += 1
        if calls["n"] > 3:  # baseline eval, round 1, eval 1 succeed; round 2 fails
            raise RuntimeError("reward server down")
        return outputs.sum(1)

    loop, _ = make_loop(tmp_path, scorer=flaky)
    with pytest.raises(RunError, match=r"round 2, scoring with 'sum' failed: RuntimeError: reward server down"):
        loop.run()
    assert len(History.load(tmp_path).rounds) == 1
    assert checkpoint.resolve_resume(tmp_path, "latest").name == "round-0001"


def test_wrong_shape_reward_is_named(tmp_path):
    loop, _ = make_loop(tmp_path, scorer=lambda o, p, m: o.sum(1)[:-1])
    with pytest.raises(ScorerError, match=r"scorer 'sum' returned shape \(1,\) for 2 samples"):
        loop.run()


def test_nan_reward_error_and_exclude(tmp_path):
    def nan_first(outputs, prompts, metadata):
        r = outputs.sum(1)
        r[0] = float("nan")
        return r

    loop, _ = make_loop(tmp_path / "a", scorer=nan_first, eval_every=0)
    loop.eval_prompts = []
    with pytest.raises(Exception, match="non-finite"):
        loop.run()
    loop, _ = make_loop(tmp_path / "b", scorer=nan_first, nonfinite="exclude")
    loop.eval_prompts = []
    history = loop.run()
    assert all(r["n_nonfinite"] == 1 for r in history.rounds)


def test_filter_hook(tmp_path):
    loop, _ = make_loop(tmp_path, rounds=1)
    loop.sample_filter = lambda samples, rewards: [not i.endswith("-k0") for i in samples.ids]
    history = loop.run()
    assert history.rounds[0]["n_filtered"] == 3
    assert not any(i.endswith("-k0") for i in history.rounds[0]["kept_ids"])


def test_out_of_memory_names_round_and_keeps_rounds(tmp_path):
    loop, backend = make_loop(tmp_path)
    real = backend.generate

    def generate(*args, **kw):
        if backend.calls["generate"] >= 3:  # baseline eval, round 1, eval 1; then round 2 runs out
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(*args, **kw)

    backend.generate = generate
    with pytest.raises(RunError, match=r"round 2, generation: out of memory .*lower the batch size"):
        loop.run()
    assert [r["round"] for r in History.load(tmp_path).rounds] == [1]


def test_full_disk_names_round_and_previous_checkpoint_resumes(tmp_path, monkeypatch):
    import errno

    loop, _ = make_loop(tmp_path)
    real_save = torch.save
    calls = {"n": 0}

    def save(obj, path, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 4:  # each round: weights, then the checkpoint; round 2's checkpoint fails
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, path, *a, **kw)

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(RunError, match=r"round 2, checkpoint: no space left on the device; free some space, then continue "
                                       r"with --resume latest"):
        loop.run()
    assert not list((tmp_path / "checkpoints").glob(".round-*")), "the temporary checkpoint folder is removed"
    monkeypatch.setattr(torch, "save", real_save)
    again, _ = make_loop(tmp_path)
    assert again.resume("latest") and again.next_round == 2
    assert len(again.run().rounds) == 4


def test_a_multi_rewards_parts_are_read_at_eval_and_signal_divergence(tmp_path, caplog):
    """A z-scored multi reward reads 0 at every eval; its raw parts rise as RAFT pushes the sum up,
    so a held-out scorer that falls meanwhile is named in the round row."""
    from scorers.multi import MultiScorer

    def neg_first(outputs, prompts, metadata):  # held out: falls as the mean vector rises
        return -outputs[:, 0]

    backend = VectorBackend()
    stream = prompts.PromptStream(PROMPTS, 3, seed=1)
    settings = LoopSettings(rounds=3, k=4, prompts_per_round=3, seed=5, keep_checkpoints=None, eval_every=1)
    multi = MultiScorer([(sum_reward, 1.0)], normalize="zscore")
    loop = RaftLoop(backend, multi, stream, settings, tmp_path, scorer_name="multi", eval_prompts=PROMPTS[:2],
                    eval_scorers={"neg_first": neg_first})
    with caplog.at_level("INFO", logger="raft_diffusion"):
        history = loop.run()
    first, last = history.evals[0], history.evals[-1]
    assert first["multi"] == last["multi"] == 0.0, "one eval sample per prompt: the z-scored sum is 0"
    assert last["multi/component0"] > first["multi/component0"]
    assert last["neg_first"] < first["neg_first"]
    assert history.rounds[-1]["diverging"] == ["neg_first"]
    assert History.load(tmp_path).rounds[-1]["diverging"] == ["neg_first"], "metrics.jsonl says so too"
    assert "may be gamed" in caplog.text and "neg_first" in caplog.text and "| component0 " in caplog.text
    parts = [row["reward_parts"]["component0"] for row in history.rounds]
    assert all(p["kept"] > p["mean"] for p in parts), "the kept samples have the larger raw sums"
    assert parts[-1]["mean"] > parts[0]["mean"], "the raw part rises round on round"
    from raft_diffusion.core.early_stop import summarize

    summary = summarize(history, None, "multi", ["neg_first"])
    raw = summary["reward_parts"]["component0"]
    assert raw["before"] == first["multi/component0"] and raw["after"] == last["multi/component0"], (
        "summary.json carries the raw parts beside the z-scored reading")
