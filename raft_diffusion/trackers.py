"""Experiment trackers through accelerate (``output.report_to``, diffusers' ``--report_to`` convention).

``Accelerator(log_with=...)`` + ``init_trackers`` with the flattened config; each round logs the
metrics row's numbers (step = round), the eval scores (step = eval round, 0 = before training),
the round's grid and the before/after grid as images. TensorBoard event files land in
``run_dir/logs/raft-diffusion/``; W&B runs offline unless ``WANDB_MODE`` says otherwise (files in
``run_dir/wandb/``; ``wandb sync`` uploads them later).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from raft_diffusion.core.records import History
from raft_diffusion.errors import ConfigError

log = logging.getLogger(__name__)

PROJECT = "raft-diffusion"
REPORT_TO = ("none", "tensorboard", "wandb", "all")
#: the package each tracker needs (the import name and the pip name are the same)
PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}


def tracker_names(report_to: str) -> list[str]:
    """The trackers ``output.report_to`` asks for ('all': tensorboard and wandb); [] for 'none'."""
    if report_to not in REPORT_TO:
        raise ConfigError(f"output.report_to {report_to!r} is not one of {', '.join(REPORT_TO)}")
    if report_to == "none":
        return []
    return ["tensorboard", "wandb"] if report_to == "all" else [report_to]


def _installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def flat_config(data: dict[str, Any]) -> dict[str, Any]:
    """``{"raft": {"k": 4}}`` -> ``{"raft.k": 4}`` (the config's sections); lists and mappings inside a
    section (``reward.eval_scorers``) as JSON text: trackers take plain values only."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        for sub, v in (value.items() if isinstance(value, dict) else [(None, value)]):
            name = key if sub is None else f"{key}.{sub}"
            out[name] = json.dumps(v, sort_keys=True, default=str) if isinstance(v, (dict, list, tuple)) else v
    return out


def numbers(row: dict[str, Any], skip: tuple[str, ...] = ("round",)) -> dict[str, float]:
    """The finite int/float values of a row (booleans, text, lists, None and NaN left out)."""
    return {k: v for k, v in row.items() if k not in skip and isinstance(v, (int, float)) and not isinstance(v, bool)
            and math.isfinite(v)}


class Trackers:
    """accelerate trackers of one run (main process only): log rounds, evals and images; close."""

    def __init__(self, cfg: Any, run_dir: Path) -> None:
        self.names = tracker_names(cfg.output.report_to)
        missing = [PACKAGES[n] for n in self.names if not _installed(PACKAGES[n])]
        if missing:
            raise ConfigError(f"output.report_to {cfg.output.report_to!r} needs {' and '.join(missing)}, which is not "
                              f"installed; run `pip install {' '.join(missing)}` or set output.report_to none")
        from accelerate import Accelerator
        from accelerate.utils import ProjectConfiguration

        self.run_dir = Path(run_dir)
        if "wandb" in self.names:
            os.environ.setdefault("WANDB_MODE", "offline")
        # the trainer's Accelerator shares accelerate's process-wide state: no mixed_precision here, and
        # its gradient accumulation so that GradientState (shared too) keeps the trainer's value
        self.accelerator = Accelerator(
            log_with=self.names, gradient_accumulation_steps=cfg.train.gradient_accumulation_steps,
            project_config=ProjectConfiguration(project_dir=str(self.run_dir), logging_dir=str(self.run_dir / "logs")),
        )
        kwargs = {"wandb": {"name": self.run_dir.resolve().name, "dir": str(self.run_dir)}}
        self.accelerator.init_trackers(PROJECT, config=flat_config(cfg.to_dict()), init_kwargs=kwargs)
        self.closed = False
        log.info("tracking with %s (%s)", ", ".join(self.names), self.log_dir if "tensorboard" in self.names else "W&B")

    @property
    def log_dir(self) -> Path:
        """Where the TensorBoard event files are written."""
        return self.run_dir / "logs" / PROJECT

    def log_round(self, r: int, history: History) -> None:
        """The eval rows since the previous round (step = their round), round r's numbers, its grid and,
        after an eval round, the before/after grid."""
        prev = history.rounds[-2]["round"] if len(history.rounds) >= 2 else -1
        for ev in history.evals:
            if prev < ev["round"] <= r:
                self.accelerator.log({f"eval/{k}": v for k, v in numbers(ev).items()}, step=ev["round"])
        row = next((x for x in reversed(history.rounds) if x["round"] == r), None)
        if row is not None:
            self.accelerator.log(numbers(row), step=r)
        grid = self.run_dir / "rounds" / f"round-{r:04d}" / "grid.png"
        if grid.is_file():
            self.log_image("grid", grid, r)
        before_after = self.run_dir / "before_after.png"
        if before_after.is_file() and any(ev["round"] == r for ev in history.evals):
            self.log_image("before_after", before_after, r)

    def log_image(self, tag: str, path: Path, step: int) -> None:
        """One PNG to every tracker: TensorBoard's ``add_image``, W&B's ``wandb.Image``."""
        import numpy as np
        from PIL import Image

        with Image.open(path) as im:
            image = im.convert("RGB")
        if "tensorboard" in self.names:
            writer = self.accelerator.get_tracker("tensorboard", unwrap=True)
            writer.add_image(tag, np.asarray(image), global_step=step, dataformats="HWC")
            writer.flush()
        if "wandb" in self.names:
            import wandb

            self.accelerator.get_tracker("wandb").log({tag: wandb.Image(image, caption=f"{tag}, round {step}")}, step=step)

    def finish(self) -> None:
        """Close every tracker (accelerate's ``end_training`` minus its process-group teardown: under
        ``accelerate launch`` the other processes still share that group). Idempotent."""
        if self.closed:
            return
        for tracker in self.accelerator.trackers:
            tracker.finish()
        self.closed = True
