"""Early stopping and best-round selection, as the paper advises (reward models are imperfect).

A held-out scorer guards the run (``raft.early_stop``: a ``reward.eval_scorers`` name, scored on
the eval prompts): the run stops when its latest reading falls more than a tolerance below its
start (round 0, before training), and the run's final weights are those of the best round it
allows: the highest eval reward among the rounds it keeps within the tolerance, or, with
``raft.early_stop_best: guard``, the highest guard reading (for rewards whose eval reading says
little, such as a ``multi`` z-scored within each prompt's samples). Independently,
``raft.early_stop_patience`` stops a run whose train reward (the unbiased one) has not improved for
that many rounds. Decisions are a pure function of the History, so a
resumed run decides exactly as an uninterrupted one. Imports no torch, diffusers or transformers.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from raft_diffusion.core.atomic import atomic_path
from raft_diffusion.core.records import History, write_json

log = logging.getLogger(__name__)

BEST_DIR = "best"


@dataclass(frozen=True)
class StopDecision:
    """best_round: the trained round the guard rates best (None without a guard or a reading).
    stop_reason: why the run stops now, or None to go on."""

    best_round: int | None = None
    stop_reason: str | None = None


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def decide(evals: Sequence[dict[str, Any]], rounds: Sequence[dict[str, Any]], guard: str | None,
           tolerance: float = 0.05, patience: int | None = None, reward: str | None = None,
           best_by: str = "reward") -> StopDecision:
    """The decision after the last row of ``rounds`` (metrics rows) given the eval rows ``evals``.

    The best round: with ``best_by`` "reward", among the trained eval rounds whose guard reading
    stays within the tolerance of its start, the one with the highest eval ``reward`` (the earlier on
    ties); with ``best_by`` "guard", without a ``reward`` reading there, or when no round stays
    within, the round with the highest guard reading."""
    best, reason = None, None
    if guard:
        readings = [(int(e["round"]), float(e[guard]), e.get(reward) if reward else None)
                    for e in evals if _finite(e.get(guard))]
        start = next((v for r, v, _ in readings if r == 0), None)
        floor = None if start is None else start - tolerance * abs(start)
        trained = [x for x in readings if x[0] >= 1]
        within = [x for x in trained if floor is None or x[1] >= floor]
        if best_by == "reward" and within and all(_finite(x[2]) for x in within):
            best = max(within, key=lambda x: (x[2], -x[0]))[0]
        elif trained:
            best = max(trained, key=lambda x: (x[1], -x[0]))[0]
        if floor is not None and trained and trained[-1][1] < floor:
            last_round, last = trained[-1][0], trained[-1][1]
            reason = (f"{guard} fell to {last:.4g} at round {last_round}, more than {tolerance:.0%} below its "
                      f"start {start:.4g}")
    if patience and reason is None and rounds:
        rewards = [(int(r["round"]), float(r["reward_unbiased"])) for r in rounds if _finite(r.get("reward_unbiased"))]
        if rewards:
            best_round, best_value = max(rewards, key=lambda rv: (rv[1], -rv[0]))
            waited = int(rounds[-1]["round"]) - best_round
            if waited >= patience:
                reason = (f"the train reward has not improved for {waited} rounds (best {best_value:.4g} at round "
                          f"{best_round})")
    return StopDecision(best, reason)


def diverging(evals: Sequence[dict[str, Any]], reward: str, held_out: Sequence[str]) -> list[str]:
    """The held-out scorers that read lower at the latest eval round than before training (round 0)
    while the reward, or one of its parts (``"<reward>/<part>"``, a multi reward's), reads higher:
    the reward is being gamed rather than the task learned."""
    if len(evals) < 2 or evals[0].get("round") != 0:
        return []
    first, last = evals[0], evals[-1]

    def change(key: str) -> float:
        before, after = first.get(key), last.get(key)
        return after - before if _finite(before) and _finite(after) else 0.0

    if not any(change(key) > 0 for key in last if key == reward or key.startswith(f"{reward}/")):
        return []
    return [n for n in held_out if n != reward and change(n) < 0]


def promote_best(run_dir: Path) -> bool:
    """Make the weights saved in ``run_dir/best`` the run's final weights (files and folders replaced
    atomically, one by one). False when there is nothing saved there."""
    best = Path(run_dir) / BEST_DIR
    if not best.is_dir():
        return False
    for entry in best.iterdir():
        target = Path(run_dir) / entry.name
        tmp = Path(run_dir) / f".{entry.name}.best-tmp"
        if entry.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(entry, tmp)
            old = Path(run_dir) / f".{entry.name}.old"
            if target.exists():
                os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            with atomic_path(target) as part:
                shutil.copyfile(entry, part)
    return True


def summarize(history: History, guard: str | None, reward: str, eval_names: Sequence[str]) -> dict[str, Any]:
    """The run's figures: the best round, why it stopped, and the reward and the guard (or the first
    held-out scorer) before training (round 0) and at the best (else the last) eval round.
    ``reward_parts``: a multi reward's parts (eval columns ``<reward>/<part>``), raw, before and after;
    its own reading is z-scored within each prompt's samples when it normalises, so that one reads 0."""
    rounds, evals = history.rounds, history.evals
    best = rounds[-1].get("best_round") if rounds else None
    fidelity = guard or next(iter(eval_names), None)
    first = evals[0] if evals and evals[0].get("round") == 0 else None
    last = next((e for e in evals if e.get("round") == best), None) if best is not None else None
    last = last or (evals[-1] if evals and evals[-1].get("round", 0) > 0 else None)

    def reading(row: dict[str, Any] | None, name: str | None) -> Any:
        return None if row is None or name is None else row.get(name)

    return {
        "rounds_run": rounds[-1]["round"] if rounds else 0, "best_round": best,
        "stop_reason": rounds[-1].get("stop_reason") if rounds else None,
        "reward_name": reward, "reward_before": reading(first, reward), "reward_after": reading(last, reward),
        "fidelity_name": fidelity, "fidelity_before": reading(first, fidelity), "fidelity_after": reading(last, fidelity),
        "held_out": {n: {"before": reading(first, n), "after": reading(last, n)} for n in eval_names},
        "reward_parts": {key.split("/", 1)[1]: {"before": reading(first, key), "after": reading(last, key)}
                         for key in {**(first or {}), **(last or {})} if key.startswith(f"{reward}/")},
    }


def finish(run_dir: Path, history: History, guard: str | None, reward: str, eval_names: Sequence[str]) -> dict[str, Any]:
    """End of a run: under a guard the final weights become the best round's (:func:`promote_best`),
    and ``summary.json`` records :func:`summarize`."""
    rounds = history.rounds
    best = rounds[-1].get("best_round") if rounds else None
    if guard and best is not None and best != rounds[-1]["round"] and promote_best(run_dir):
        log.info("final weights: round %d, the best by %s", best, guard)
    summary = summarize(history, guard, reward, eval_names)
    write_json(Path(run_dir) / "summary.json", summary)
    return summary
