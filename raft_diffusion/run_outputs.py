"""What a run leaves besides its records: the reward curve, ``report.html``, the model card
(``README.md``), tracker logs (``output.report_to``) and the hub upload (``output.push_to_hub``).

:class:`RunOutputs` is built with the run (``api.build_loop``); the loop calls :meth:`RunOutputs.on_round`
after every round on the main process, and ``api.train`` calls :meth:`RunOutputs.finish` once the
loop returns (main process only). Files another part writes (``summary.json``, ``before_after.png``,
the round grids) are read when present and left out when not.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from raft_diffusion.core.records import History

log = logging.getLogger(__name__)

#: rounds between redraws of reward_curve.png and report.html (both are also written at the end)
CURVE_EVERY = 10
SUMMARY = "summary.json"


def run_summary(run_dir: Path, history: History, scorer_name: str, eval_names: list[str],
                read_file: bool = True, guard: str | None = None) -> dict[str, Any]:
    """``summary.json`` (with ``read_file``; the run writes it at its end) when present, else the same
    figures from the History (:func:`~raft_diffusion.core.early_stop.summarize`)."""
    from raft_diffusion.core.early_stop import summarize

    path = Path(run_dir) / SUMMARY
    if read_file and path.is_file():
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            log.warning("%s is unreadable (%s); the report uses eval.jsonl instead", path, exc)
    return summarize(history, guard, scorer_name, eval_names)


class RunOutputs:
    """The run folder's derived outputs and trackers for one run (see the module doc).

    cfg: the RaftConfig; run_dir: the run folder; scorer_name: the reward's name; family: the
    diffusion model family's name (for the model card), when known.
    """

    def __init__(self, cfg: Any, run_dir: str | Path, scorer_name: str, *, family: str | None = None) -> None:
        from raft_diffusion.core import distributed

        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.scorer_name = scorer_name
        self.family = family
        self.trackers: Any = None
        if not distributed.get().is_main:
            return
        if cfg.output.push_to_hub:
            from raft_diffusion.hub import check_push

            check_push(cfg, self.run_dir)
        if cfg.output.report_to != "none":
            from raft_diffusion.trackers import Trackers

            self.trackers = Trackers(cfg, self.run_dir)

    # ----------------------------------------------------------------- per round
    def on_round(self, r: int, history: History) -> None:
        """After round r (main process): trackers every round; the reward curve and report.html every
        CURVE_EVERY rounds and after the last (drawing costs more than the rest of a round's records)."""
        if r == self.cfg.raft.rounds or r % CURVE_EVERY == 0:
            self.draw_curve(history)
            self.write_report(history, final=False)
        if self.trackers is not None:
            self.trackers.log_round(r, history)

    def draw_curve(self, history: History) -> Path:
        from raft_diffusion.report import reward_curve

        return reward_curve(history.rounds, self.run_dir / "reward_curve.png", history.evals, self.scorer_name)

    # ----------------------------------------------------------------- the end
    def summary(self, history: History, final: bool = True) -> dict[str, Any]:
        """The run's figures: ``summary.json`` at the end (``final``), the eval rows before (a resumed
        run's folder may hold the summary of its previous end)."""
        return run_summary(self.run_dir, history, self.scorer_name, list(self.cfg.reward.eval_scorers), read_file=final,
                           guard=self.cfg.raft.early_stop)

    def info(self) -> dict[str, Any]:
        """The facts the report shows first."""
        c = self.cfg
        return {"backend": c.backend, "base model": c.model.pretrained, "family": self.family or c.model.family,
                "reward": self.scorer_name, "rounds (configured)": c.raft.rounds,
                "samples per prompt (K)": c.raft.k, "prompts per round": c.raft.prompts_per_round,
                "description": c.description or None}

    def write_report(self, history: History, final: bool = True) -> Path:
        """``report.html`` (see :mod:`raft_diffusion.html_report`); ``final``: at the end of the run."""
        from raft_diffusion.html_report import write_report

        held_out = [*self.cfg.reward.eval_scorers, *([self.cfg.raft.early_stop] if self.cfg.raft.early_stop else [])]
        return write_report(self.run_dir, self.cfg.to_yaml(), history, self.scorer_name,
                            self.summary(history, final), self.info(), list(dict.fromkeys(held_out)))

    def write_card(self, history: History, lora_ref: str | None = None) -> Path:
        """``README.md``: the model card; ``lora_ref`` (the hub repo when pushing) is what its usage
        snippet loads, the run folder by default."""
        from raft_diffusion.model_card import card_text, write_card

        text = card_text(self.cfg, history, self.scorer_name, self.summary(history), family=self.family,
                         lora_ref=lora_ref or str(self.run_dir), run_dir=self.run_dir, for_hub=lora_ref is not None)
        return write_card(self.run_dir, text)

    def finish(self, history: History) -> None:
        """End of the run (main process): the final curve, report.html, README.md, trackers closed;
        with output.push_to_hub, the hub repo (created first: the card names its full id) and the upload."""
        from raft_diffusion import hub

        try:
            self.draw_curve(history)
            self.write_report(history)
            self.write_card(history)
            log.info("wrote %s and %s", self.run_dir / "report.html", self.run_dir / "README.md")
        finally:
            if self.trackers is not None:
                self.trackers.finish()
        if self.cfg.output.push_to_hub:
            rid = hub.create_repo(self.cfg, self.run_dir)
            self.write_card(history, lora_ref=rid)
            hub.upload_run(self.cfg, self.run_dir, rid)
