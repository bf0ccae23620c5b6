"""``report.html``: one self-contained page per run (curves as inline SVG, images by relative path).

It holds the run's figures (reward before/after, fidelity, best round, why it stopped), the reward
and held-out scorer curves, the before/after grid, the metrics table, every round's grid and the
config as YAML. Images are referenced relative to the run folder, so the page works wherever the
folder is copied.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from html import escape
from pathlib import Path
from typing import Any

from raft_diffusion.core.atomic import atomic_path
from raft_diffusion.core.records import History
from raft_diffusion.svg_chart import line_chart

REPORT = "report.html"

#: metrics.jsonl columns shown in the table (when present), in order
TABLE_COLUMNS = ("reward_unbiased", "reward_mean", "reward_kept", "reward_best_mean", "n_kept", "train_loss",
                 "diversity", "time_round_s")

STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; border-bottom: 1px solid #ddd; padding-bottom: 4px; margin-top: 32px; }
table { border-collapse: collapse; font-size: 13px; } td, th { border: 1px solid #ddd; padding: 3px 8px; text-align: right; }
th { background: #f5f5f5; } td:first-child, th:first-child { text-align: left; }
figure { display: inline-block; margin: 8px; vertical-align: top; } figcaption { font-size: 13px; color: #555; }
img { max-width: 100%; image-rendering: pixelated; border: 1px solid #eee; }
pre { background: #f7f7f7; padding: 12px; font-size: 12px; overflow-x: auto; }
.charts svg { margin: 4px 12px 12px 0; vertical-align: top; } .wide { overflow-x: auto; }
"""


def fmt(value: Any) -> str:
    """A cell: numbers to 4 significant digits, None as an em dash."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "&mdash;"
    if isinstance(value, float):
        return f"{value:.4g}"
    return escape(str(value))


def rel(path: Path, run_dir: Path) -> str:
    """``path`` relative to the run folder, with forward slashes (an img src)."""
    return Path(os.path.relpath(path, run_dir)).as_posix()


def _facts(summary: dict[str, Any], info: dict[str, Any]) -> str:
    """The headline table: ``info`` then the figures of ``summary.json``."""
    rows = [(escape(k), fmt(v)) for k, v in info.items() if v is not None]
    reward, fidelity = summary.get("reward_name"), summary.get("fidelity_name")
    if reward and (summary.get("reward_before") is not None or summary.get("reward_after") is not None):
        rows.append((f"reward {escape(reward)} on the eval prompts, before &rarr; after",
                     f"{fmt(summary.get('reward_before'))} &rarr; {fmt(summary.get('reward_after'))}"))
    if fidelity:
        rows.append((f"fidelity {escape(fidelity)}, before &rarr; after",
                     f"{fmt(summary.get('fidelity_before'))} &rarr; {fmt(summary.get('fidelity_after'))}"))
    rows.append(("best round", fmt(summary.get("best_round"))))
    rows.append(("stopped", fmt(summary.get("stop_reason") or "after every round")))
    return "<table>" + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows) + "</table>"


def _curves(history: History, scorer_name: str, held_out: Sequence[str]) -> str:
    """The reward chart (train rows and eval prompts), one chart per held-out scorer, and diversity."""
    rows, evals = history.rounds, history.evals
    reward = {label: [(r["round"], r.get(key)) for r in rows]
              for key, label in (("reward_unbiased", "unbiased (first sample)"), ("reward_mean", "mean of all"),
                                 ("reward_kept", "kept set"))}
    if evals:
        reward["eval prompts"] = [(e["round"], e.get(scorer_name)) for e in evals]
    charts = [line_chart(reward, f"reward: {scorer_name}", y_label=scorer_name)]
    for name in held_out:
        if name != scorer_name and any(name in e for e in evals):
            charts.append(line_chart({"eval prompts": [(e["round"], e.get(name)) for e in evals]},
                                     f"held-out: {name}", y_label=name))
    if any("diversity" in r for r in rows) or any("diversity" in e for e in evals):
        charts.append(line_chart({"train samples": [(r["round"], r.get("diversity")) for r in rows],
                                  "eval prompts": [(e["round"], e.get("diversity")) for e in evals]},
                                 "diversity (mean pairwise distance within a prompt)", y_label="diversity"))
    return f'<div class="charts">{"".join(charts)}</div>'


def _table(history: History) -> str:
    rows = history.rounds
    cols = [c for c in TABLE_COLUMNS if any(c in r for r in rows)]
    eval_by_round = {e["round"]: e for e in history.evals}
    eval_cols = [k for e in history.evals[:1] for k in e
                 if k not in ("round", "seconds") and not k.endswith("_per_prompt") and isinstance(e[k], (int, float))]
    head = "".join(f"<th>{escape(c)}</th>" for c in ["round", *cols, *(f"eval {c}" for c in eval_cols)])
    body = []
    for r in rows:
        ev = eval_by_round.get(r["round"], {})
        cells = [fmt(r.get(c)) for c in cols] + [fmt(ev.get(c)) for c in eval_cols]
        body.append(f"<tr><td>{r['round']}</td>{''.join(f'<td>{c}</td>' for c in cells)}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _figure(src: str, caption: str) -> str:
    return (f'<figure><img src="{escape(src)}" alt="{escape(caption)}" loading="lazy">'
            f"<figcaption>{escape(caption)}</figcaption></figure>")


def _grids(run_dir: Path, rows: Sequence[dict[str, Any]]) -> str:
    figures = []
    for r in rows:
        grid = run_dir / "rounds" / f"round-{r['round']:04d}" / "grid.png"
        if grid.is_file():
            figures.append(_figure(rel(grid, run_dir), f"round {r['round']}: every sample, kept ones marked"))
    return "".join(figures) or "<p>No round grids (output.save_grids is off, or the backend writes text).</p>"


def render_report(run_dir: Path, config_yaml: str, history: History, scorer_name: str, summary: dict[str, Any],
                  info: dict[str, Any], held_out: Sequence[str] = ()) -> str:
    """The page's HTML. ``info``: the facts shown first (base model, family, reward, rounds);
    ``held_out``: the eval scorers charted beside the reward."""
    run_dir = Path(run_dir)
    title = f"RAFT run: {run_dir.resolve().name}"
    parts = [(f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{escape(title)}</title>"
             f"<style>{STYLE}</style></head><body><h1>{escape(title)}</h1>"), _facts(summary, info),
             "<h2>Curves</h2>", _curves(history, scorer_name, held_out)]
    before_after = run_dir / "before_after.png"
    if before_after.is_file():
        parts += ["<h2>Before / after (eval prompts, same seeds)</h2>",
                  _figure(rel(before_after, run_dir), "round 0 (before training) beside the latest eval round")]
    parts += ["<h2>Metrics per round</h2>", f'<div class="wide">{_table(history)}</div>',
              "<h2>Round grids</h2>", _grids(run_dir, history.rounds),
              "<h2>Config</h2>", f"<pre>{escape(config_yaml)}</pre>", "</body></html>"]
    return "\n".join(parts)


def write_report(run_dir: Path, config_yaml: str, history: History, scorer_name: str, summary: dict[str, Any],
                 info: dict[str, Any], held_out: Sequence[str] = ()) -> Path:
    """Write ``run_dir/report.html`` atomically; returns its path."""
    path = Path(run_dir) / REPORT
    text = render_report(run_dir, config_yaml, history, scorer_name, summary, info, held_out)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path
