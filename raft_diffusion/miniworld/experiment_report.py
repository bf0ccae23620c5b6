"""Reports of the miniworld experiments (:mod:`experiments`): markdown tables, the issue's checks, the
per-seed summary and the reward curves.

Every shape and colour figure is given twice, read by the independent evaluator (the headline) and by
the miniworld CLIP (which is also the resolution preset's reward); the aesthetic experiment adds the
gold rating (the rating rule applied to the evaluator's reading) and the gain under other samplers.
"""

from __future__ import annotations

import csv
import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


TARGETS = {"shape_acc": "target >= 90%, at the least 50%", "colour_acc": "target >= 90%",
           "clip_shape_acc": "the CLIP the reward uses", "clip_colour_acc": "the CLIP the reward uses",
           "miniworld-clip": "the reward, or a part of it"}


def recovered(result: dict[str, Any], key: str, split: str = "in_domain") -> float:
    """Fraction of the native-to-low-resolution drop of ``key`` that RAFT won back (resolution experiment)."""
    n, b, a = (result[part][split][key] for part in ("native", "before", "after"))
    return (a - b) / (n - b) if n > b else float("nan")


def summary_lines(result: dict[str, Any]) -> list[str]:
    """Markdown table rows of before / after per split, and the experiment's headline checks."""
    reward = result["reward"]
    native = result.get("native")
    lines = [
        "| split | metric | " + (f"native {result['native_resolution']} px | " if native else "") + "before | after |",
        "|---|---|---|---|" + ("---|" if native else ""),
    ]
    for split in ("in_domain", "out_of_domain"):
        b, a = result["before"][split], result["after"][split]
        n = native[split] if native else None
        rows = [(f"{reward} (unbiased: first image per prompt)", f"{reward}_first", "{:.3f}"),
                (f"{reward} (mean of {result['per_prompt']} per prompt)", reward, "{:.3f}"),
                ("held-out CLIP score (miniworld-clip)", "miniworld-clip", "{:.2f}"),
                ("gold rating (the rule on the independent evaluator's reading)", "gold_rating", "{:.2f}"),
                ("shape named right (independent evaluator)", "shape_acc", None),
                ("shape named right (miniworld CLIP zero-shot)", "clip_shape_acc", None),
                ("colour named right (independent evaluator)", "colour_acc", None),
                ("colour named right (miniworld CLIP zero-shot)", "clip_colour_acc", None),
                ("diversity (mean pairwise RMS pixel distance per prompt)", "diversity", "{:.4f}")]
        for label, key, fmt in rows:
            if label.startswith("held-out CLIP") and reward == "miniworld-clip":
                continue  # the reward rows above are already the CLIP score
            if key.startswith(reward) and reward == "multi":
                continue  # z-scored within each prompt's images: 0 on average by construction
            f = (lambda v: _pct(v)) if fmt is None else (lambda v, fmt=fmt: fmt.format(v))
            cells = ([f(n[key])] if n else []) + [f(b[key]), f(a[key])]
            lines.append(f"| {split.replace('_', '-')} | {label} | " + " | ".join(cells) + " |")
    return lines


def checks(result: dict[str, Any]) -> list[str]:
    """The issue's targets, computed from the figures (in-domain unless said)."""
    out = []
    b, a = result["before"]["in_domain"], result["after"]["in_domain"]
    if result["experiment"] == "resolution":
        n = result["native"]["in_domain"]
        for key in ("shape_acc", "colour_acc", "clip_shape_acc", "clip_colour_acc", "miniworld-clip"):
            drop = n[key] - b[key]
            frac = recovered(result, key)
            fmt = _pct if key.endswith("_acc") else (lambda v: f"{v:.2f}")
            unit = " points" if key.endswith("_acc") else ""
            scale = 100 if key.endswith("_acc") else 1
            target = TARGETS.get(key, "reported")
            out.append(f"- {key}: native {fmt(n[key])}, at {result['resolution']} px {fmt(b[key])} before RAFT "
                       f"(drop {scale * drop:.1f}{unit}), {fmt(a[key])} after: recovered {100 * frac:.0f}% of the drop "
                       f"({target})")
        if "vae_round_trip" in result:
            c = result["vae_round_trip"]
            out.append(f"- VAE round trip: held-out renders resized to {result['resolution']} px, encoded and decoded, are named "
                       f"right for shape {_pct(c['shape_acc'])} (CLIP {_pct(c['clip_shape_acc'])}), colour "
                       f"{_pct(c['colour_acc'])} (CLIP {_pct(c['clip_colour_acc'])}) (a reference, not a bound: "
                       f"the UNet's latents need not be the encoder's)")
        ob, oa = result["before"]["out_of_domain"], result["after"]["out_of_domain"]
        out.append(f"- out-of-domain (independent evaluator): shape {_pct(ob['shape_acc'])} -> {_pct(oa['shape_acc'])}, "
                   f"colour {_pct(ob['colour_acc'])} -> {_pct(oa['colour_acc'])}")
    else:
        r = result["reward"]
        gain = a[r] - b[r]
        std = b[f"{r}_std"]
        out.append(f"- reward gain {gain:+.3f} = {gain / std if std else float('nan'):.2f} std of the base model's reward "
                   f"distribution ({std:.3f}) (target >= 1)")
        g0, g1, gstd = b["gold_rating"], a["gold_rating"], b["gold_rating_std"]
        out.append(f"- gold rating (independent) {g0:.2f} -> {g1:.2f} = {(g1 - g0) / gstd if gstd else float('nan'):+.2f} std "
                   f"of the base model's ({gstd:.2f})")
        c0, c1 = b["miniworld-clip"], a["miniworld-clip"]
        out.append(f"- held-out CLIP score {c0:.2f} -> {c1:.2f} ({100 * (c1 - c0) / c0:+.1f}%; target: no drop beyond -5%)")
        out.append(f"- shape / colour named right (independent): {_pct(b['shape_acc'])} -> {_pct(a['shape_acc'])} / "
                   f"{_pct(b['colour_acc'])} -> {_pct(a['colour_acc'])}")
    return out


def sampler_lines(result: dict[str, Any]) -> list[str]:
    """Markdown rows: the reward and gold-rating gain of the tuned model under each sampler (in-domain)."""
    if "samplers_after" not in result:
        return []
    r = result["reward"]
    lines = [f"| sampler (10 steps) | {r} before | after | gain (std) | gold rating before | after | gain (std) |",
             "|---|---|---|---|---|---|---|"]
    for label, a in result["samplers_after"].items():
        b = result["samplers_before"][label]
        cells = []
        for key in (r, "gold_rating"):
            std = b[f"{key}_std"] or float("nan")
            cells += [f"{b[key]:.2f}", f"{a[key]:.2f}", f"{a[key] - b[key]:+.2f} ({(a[key] - b[key]) / std:+.2f})"]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def seed_lines(results: Sequence[dict[str, Any]]) -> list[str]:
    """One markdown row per seed (and the mean): the headline figures, independent beside CLIP."""
    pct = _pct
    if results[0]["experiment"] == "resolution":
        cols = ["shape (independent)", "shape (CLIP)", "colour (independent)", "colour (CLIP)",
                "shape drop recovered (independent / CLIP)", "colour drop recovered (independent / CLIP)",
                "out-of-domain shape (independent)", "diversity"]

        def row(r: dict[str, Any]) -> list[float]:
            a, ob, oa = r["after"]["in_domain"], r["before"]["out_of_domain"], r["after"]["out_of_domain"]
            return [a["shape_acc"], a["clip_shape_acc"], a["colour_acc"], a["clip_colour_acc"],
                    recovered(r, "shape_acc"), recovered(r, "clip_shape_acc"), recovered(r, "colour_acc"),
                    recovered(r, "clip_colour_acc"), oa["shape_acc"] - ob["shape_acc"], a["diversity"]]

        def cells(v: list[float]) -> list[str]:
            return [pct(v[0]), pct(v[1]), pct(v[2]), pct(v[3]), f"{pct(v[4])} / {pct(v[5])}",
                    f"{pct(v[6])} / {pct(v[7])}", f"{100 * v[8]:+.1f} points", f"{v[9]:.3f}"]
    else:
        name = results[0]["reward"]
        cols = [f"{name} gain (std)", "gold rating gain (std)", "held-out CLIP score", "shape (independent)",
                "colour (independent)", "diversity"]

        def row(r: dict[str, Any]) -> list[float]:
            b, a = r["before"]["in_domain"], r["after"]["in_domain"]
            return [(a[name] - b[name]) / b[f"{name}_std"], (a["gold_rating"] - b["gold_rating"]) / b["gold_rating_std"],
                    a["miniworld-clip"] / b["miniworld-clip"] - 1, a["shape_acc"] - b["shape_acc"],
                    a["colour_acc"] - b["colour_acc"], a["diversity"] - b["diversity"]]

        def cells(v: list[float]) -> list[str]:
            return [f"{v[0]:+.2f}", f"{v[1]:+.2f}", f"{100 * v[2]:+.1f}%", f"{100 * v[3]:+.1f} points",
                    f"{100 * v[4]:+.1f} points", f"{v[5]:+.3f}"]
    # under a guard that kept an earlier round: what the run's last round reads instead
    guarded = results[0]["experiment"] == "resolution" and any("last_round" in r for r in results)
    if guarded:
        cols.append("last round instead: shape / colour (independent)")

    def full_row(r: dict[str, Any]) -> list[float]:
        last = r.get("last_round", r["after"])["in_domain"]
        return row(r) + ([last["shape_acc"], last["colour_acc"]] if guarded else [])

    def full_cells(v: list[float]) -> list[str]:
        return cells(v[:-2]) + [f"{pct(v[-2])} / {pct(v[-1])}"] if guarded else cells(v)

    lines = ["| seed | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    rows = [full_row(r) for r in results]
    for r, v in zip(results, rows):
        lines.append(f"| {r.get('seed', 0)} | " + " | ".join(full_cells(v)) + " |")
    if len(rows) > 1:
        lines.append("| mean | " + " | ".join(full_cells([statistics.fmean(c) for c in zip(*rows)])) + " |")
    return lines


def _final_round(results: Sequence[dict[str, Any]]) -> str:
    """The sentence saying which round's weights each run ended with (under a guard), or ''."""
    guard = results[0].get("guard")
    best = [r["history"][-1].get("best_round") for r in results if r.get("history")]
    if not guard or not any(b is not None for b in best):
        return ""
    return (f" Each run ends with the weights of the round its guard `{guard}` (on the run's own eval prompts and "
            f"seeds, not those of these tables) reads highest: round {', '.join(str(b) for b in best)}.")


def write_results(results: Sequence[dict[str, Any]], folder: str | Path) -> Path:
    """Into ``folder``: ``miniworld_<name>.md`` (the per-seed summary, the first seed's full table, checks
    and sampler table), ``miniworld_<name>_curve.csv`` (the first seed's reward curve) and
    ``miniworld_<name>.json`` (every figure, for rebuilding the tables)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    result = results[0]
    name = result["experiment"]
    md = folder / f"miniworld_{name}.md"
    seeds = ", ".join(str(r.get("seed", 0)) for r in results)
    wall = ", ".join(f"{r['wall_s']:.0f}" for r in results)
    text = [f"# Miniworld {name} experiment", "",
            (f"preset `{result['preset']}`, reward `{result['reward']}`, {result['rounds']} rounds x "
            f"{result['prompts_per_round']} prompts x K={result['k']}, generating and training at {result['resolution']} px "
            f"(native {result['native_resolution']} px); evaluation: {result['per_prompt']} images per prompt from fixed "
            f"seeds; `raft.seed` {seeds}; wall time {wall} s on the CPU. Shape and colour are read by the independent "
             "evaluator (a CNN trained only on renders; the headline) and by the miniworld CLIP.")
            + _final_round(results), "",
            "In-domain, after RAFT, per seed:", "", *seed_lines(results), "",
            f"Seed {result.get('seed', 0)} in full:", "", *summary_lines(result), "", *checks(result)]
    samplers = sampler_lines(result)
    if samplers:
        text += ["", "The base and the tuned model under other samplers (in-domain, same prompts and seeds):", ""]
        text += samplers
    md.write_text("\n".join(text) + "\n", encoding="utf-8")
    (folder / f"miniworld_{name}.json").write_text(json.dumps(list(results), indent=1, default=str) + "\n")
    curve = folder / f"miniworld_{name}_curve.csv"
    keys = ["round", "reward_unbiased", "reward_mean", "reward_std", "reward_kept", "diversity", "train_loss", "time_round_s"]
    guard = result.get("guard")
    readings = {e["round"]: e.get(guard) for e in result.get("evals", [])} if guard else {}
    with open(curve, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(keys + ([f"guard {guard} (eval)"] if readings else []))
        for row in result["history"]:
            w.writerow([row.get(k) for k in keys] + ([readings.get(row["round"])] if readings else []))
    return md
