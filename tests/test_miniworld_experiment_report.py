"""The miniworld experiment reports: the drop recovered, per-seed rows with their mean, both readings in
the tables, the files written, and the sampler switch restoring the backend's own."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from raft_diffusion.miniworld import experiment_report as rep
from raft_diffusion.miniworld.experiments import SAMPLERS, sampler


def _split(shape: float, colour: float, clip: float = 50.0) -> dict:
    return {"shape_acc": shape, "colour_acc": colour, "clip_shape_acc": shape + 0.1, "clip_colour_acc": colour,
            "miniworld-clip": clip, "miniworld-clip_first": clip, "miniworld-clip_std": 5.0, "diversity": 0.3,
            "gold_rating": 5.0 + shape, "gold_rating_first": 5.0, "gold_rating_std": 1.0}


def _resolution(seed: int, after_shape: float) -> dict:
    return {"experiment": "resolution", "preset": "miniworld-resolution", "reward": "miniworld-clip", "seed": seed,
            "resolution": 16, "native_resolution": 32, "rounds": 2, "k": 4, "prompts_per_round": 16, "per_prompt": 8,
            "wall_s": 1.0, "history": [{"round": 0, "reward_unbiased": 1.0}],
            "native": {"in_domain": _split(0.9, 1.0, 70), "out_of_domain": _split(0.3, 0.9)},
            "before": {"in_domain": _split(0.2, 0.2, 20), "out_of_domain": _split(0.25, 0.1)},
            "after": {"in_domain": _split(after_shape, 0.95, 60), "out_of_domain": _split(0.25, 0.8)},
            "vae_round_trip": {"shape_acc": 0.7, "colour_acc": 1.0, "clip_shape_acc": 0.6, "clip_colour_acc": 1.0}}


def test_recovered_fraction_of_drop():
    r = _resolution(0, 0.55)
    assert rep.recovered(r, "shape_acc") == pytest.approx(0.5)
    assert rep.recovered(r, "colour_acc") == pytest.approx(0.75 / 0.8)


def test_seed_lines_mean_and_both_readings(tmp_path):
    results = [_resolution(0, 0.55), _resolution(1, 0.9)]
    lines = rep.seed_lines(results)
    assert "shape (independent)" in lines[0] and "shape (CLIP)" in lines[0]
    assert lines[2].startswith("| 0 | 55.0% | 65.0%")
    assert lines[-1].startswith("| mean | 72.5% | 82.5%")
    md = rep.write_results(results, tmp_path)
    text = md.read_text()
    assert "independent evaluator" in text and "miniworld CLIP" in text and "recovered 50% of the drop" in text
    assert json.loads((tmp_path / "miniworld_resolution.json").read_text())[1]["seed"] == 1
    assert (tmp_path / "miniworld_resolution_curve.csv").read_text().startswith("round,")


def test_guarded_runs_name_their_final_round_and_the_curve_has_the_guard(tmp_path):
    results = [_resolution(seed, 0.5) for seed in (0, 1)]
    for r, best in zip(results, (7, 9)):
        r["guard"] = "miniworld-independent"
        r["history"] = [{"round": i, "reward_unbiased": 0.1 * i, "best_round": min(i, best)} for i in range(1, 11)]
        r["evals"] = [{"round": i, "miniworld-independent": 0.05 * i} for i in range(0, 11)]
    results[0]["last_round"] = {"in_domain": _split(0.3, 0.6), "out_of_domain": _split(0.2, 0.5)}
    text = rep.write_results(results, tmp_path).read_text()
    assert "guard `miniworld-independent`" in text and "round 7, 9." in text
    table = rep.seed_lines(results)
    assert table[0].endswith("| last round instead: shape / colour (independent) |")
    assert table[2].endswith("| 30.0% / 60.0% |") and table[3].endswith("| 50.0% / 95.0% |"), "no last_round: the final"
    assert table[4].endswith("| 40.0% / 77.5% |") and table[4].startswith("| mean | 50.0%")
    rows = (tmp_path / "miniworld_resolution_curve.csv").read_text().splitlines()
    assert rows[0].endswith(",guard miniworld-independent (eval)")
    assert float(rows[3].split(",")[-1]) == pytest.approx(0.15), "round 3's guard reading"
    assert "guard" not in rep.write_results([_resolution(0, 0.5)], tmp_path / "plain").read_text()


def test_sampler_switch_restores():
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    own = DPMSolverMultistepScheduler()
    backend = SimpleNamespace(pipe=SimpleNamespace(scheduler=own), cfg=SimpleNamespace(sampling=SimpleNamespace(eta=0.0)))
    scheduler, eta = SAMPLERS["DDIM eta 1"]
    with sampler(backend, scheduler, eta):
        assert isinstance(backend.pipe.scheduler, DDIMScheduler) and backend.cfg.sampling.eta == 1.0
    assert backend.pipe.scheduler is own and backend.cfg.sampling.eta == 0.0
