"""Per-round bookkeeping: the metrics row, the metrics.jsonl writer and the run's History."""

from __future__ import annotations

import json
import math
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from raft_diffusion.core.atomic import atomic_path
from raft_diffusion.core.ranking import Selection, best_per_group, first_of_group


def reward_summary(
    rewards: Sequence[float], groups: Sequence[int], labels: Sequence[str], selection: Selection
) -> dict[str, Any]:
    """The paper's bookkeeping for one round.

    reward_unbiased: mean reward of the first sample of each prompt (an unbiased estimate of the
    current model's reward: it is drawn before any selection). reward_mean / reward_std: over all
    finite samples. reward_kept: mean of the kept set. best_per_prompt: {prompt: best reward}.
    """
    finite = [float(r) for r in rewards if math.isfinite(float(r))]
    firsts = [float(rewards[i]) for i in first_of_group(groups) if math.isfinite(float(rewards[i]))]
    kept = [float(rewards[i]) for i in selection.kept]
    best = best_per_group(rewards, groups)
    label_of = {g: labels[i] for i, g in enumerate(groups)}
    return {
        "n_samples": len(rewards),
        "n_prompts": len(set(groups)),
        "n_kept": len(selection.kept),
        "n_filtered": selection.n_filtered,
        "n_nonfinite": selection.n_nonfinite,
        "reward_unbiased": statistics.fmean(firsts) if firsts else float("nan"),
        "reward_mean": statistics.fmean(finite) if finite else float("nan"),
        "reward_std": statistics.pstdev(finite) if len(finite) > 1 else 0.0,
        "reward_kept": statistics.fmean(kept) if kept else float("nan"),
        "reward_best_mean": statistics.fmean(best.values()) if best else float("nan"),
        "best_per_prompt": {label_of[g]: v for g, v in best.items()},
    }


def part_summary(parts: dict[str, Sequence[float]], kept: Sequence[int]) -> dict[str, dict[str, float]]:
    """Each part of a multi reward (raw values, N per part): its mean over the finite samples and over
    the kept ones, ``{label: {"mean": float, "kept": float}}`` (NaN where none is finite)."""

    def mean(values: Sequence[float]) -> float:
        finite = [float(v) for v in values if math.isfinite(float(v))]
        return statistics.fmean(finite) if finite else float("nan")

    return {label: {"mean": mean(v), "kept": mean([v[i] for i in kept])} for label, v in parts.items()}


def parts_text(row: dict[str, Any]) -> str:
    """A metrics row's ``reward_parts`` for the round's log line: `` | <part> <mean> (kept <mean>)``
    each; empty for a reward without parts."""
    parts = row.get("reward_parts", {})
    return "".join(f" | {label} {p['mean']:.4f} (kept {p['kept']:.4f})" for label, p in parts.items())


def eval_readings(parts: Sequence[dict[str, list[float]]], scorers: Sequence[str], texts: Sequence[str], k: int
                  ) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """An eval row's readings from every process's scores (``{key: floats}`` each, the processes in
    the global sample order; keys are the ``scorers`` and a multi reward's ``"<name>/<part>"``): the
    mean of each key and each scorer's mean per prompt (``texts``, ``k`` samples each, as
    ``"<name>_per_prompt"``); and each scorer's scores over all samples."""
    merged = {key: [x for p in parts for x in p.get(key, [])] for key in dict.fromkeys(key for p in parts for key in p)}
    readings: dict[str, Any] = {key: statistics.fmean(values) for key, values in merged.items()}
    for name in scorers:
        readings[f"{name}_per_prompt"] = {
            text: statistics.fmean(merged[name][j * k:(j + 1) * k]) for j, text in enumerate(texts)
        }
    return readings, {name: merged[name] for name in scorers}


def _clean(value: Any) -> Any:
    """JSON-safe copy: NaN/inf become None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Write ``rows`` to ``path`` atomically (temp file, fsync, rename; nothing left behind on failure)."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(_clean(row), sort_keys=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSONL file ([] when it does not exist)."""
    if not Path(path).exists():
        return []
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


@dataclass
class History:
    """What a run returns: one metrics row per round and the eval rows (round 0 = before training)."""

    rounds: list[dict[str, Any]] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)
    run_dir: Path | None = None

    def series(self, key: str) -> list[float]:
        """The values of ``key`` over rounds (None where missing)."""
        return [row.get(key) for row in self.rounds]

    @property
    def last(self) -> dict[str, Any]:
        return self.rounds[-1] if self.rounds else {}

    def to_dict(self) -> dict[str, Any]:
        return {"rounds": self.rounds, "evals": self.evals}

    @classmethod
    def from_dict(cls, d: dict[str, Any], run_dir: Path | None = None) -> "History":
        return cls(list(d.get("rounds", [])), list(d.get("evals", [])), run_dir)

    @classmethod
    def load(cls, run_dir: str | Path) -> "History":
        """Read ``metrics.jsonl`` and ``eval.jsonl`` of a run folder."""
        run_dir = Path(run_dir)
        return cls(read_jsonl(run_dir / "metrics.jsonl"), read_jsonl(run_dir / "eval.jsonl"), run_dir)

    def write(self, run_dir: Path) -> None:
        write_jsonl(run_dir / "metrics.jsonl", self.rounds)
        write_jsonl(run_dir / "eval.jsonl", self.evals)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """``data`` as JSON at ``path``, written atomically (temp file + rename; nothing left behind on failure)."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(_clean(data), indent=1) + "\n")
