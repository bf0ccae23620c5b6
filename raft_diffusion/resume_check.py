"""Resuming with another config: what may change, what is refused, and how a change is recorded.

A resume continues the samples, seeds, prompt cursor and LoRA of the completed rounds, so a config that
changes what they mean (``raft.k``, ``raft.prompts_per_round``, ``raft.seed``, the ranking, the prompts,
the reward, sampling, training, the model) is refused unless ``output.allow_config_change``
(``--allow-changes``) says so. The LoRA's shape (``backend``, ``lora.rank``, ``lora.target_modules``)
can never change: the checkpoint would not load. Operational fields (:data:`FREE`) and more rounds may
change freely. Every change is recorded in the run folder: a row of ``config-changes.jsonl`` and the
resumed run's whole config as ``config.resume-N.yaml``; ``config.yaml`` stays the run's first config.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from raft_diffusion.errors import ConfigError, ModelError

log = logging.getLogger(__name__)

#: fields that never change on resume: the checkpoint's LoRA would not fit
FIXED = ("backend", "lora.rank", "lora.target_modules")
#: fields (or whole sections, ending in '.') that change nothing the completed rounds mean
FREE = ("description", "output.", "model.device", "model.offload", "model.attention", "sampling.batch_size",
        "generation.batch_size", "train.gradient_checkpointing", "raft.rounds", "raft.eval_every", "raft.early_stop",
        "raft.early_stop_tolerance", "raft.early_stop_patience", "raft.early_stop_best")
#: fields left out of the recorded changes: they say how this command was started
IGNORED = ("output.resume", "output.overwrite", "output.allow_config_change")
CHANGES = "config-changes.jsonl"


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (the mappings ``reward.kwargs`` / ``eval_scorers`` stay whole)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and name not in ("reward.kwargs", "reward.eval_scorers"):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def latest_config(run_dir: Path) -> Path:
    """The config a run last ran with: its newest ``config.resume-N.yaml``, else ``config.yaml``."""
    resumed = sorted(run_dir.glob("config.resume-*.yaml"), key=lambda p: int(p.stem.rsplit("-", 1)[1]))
    return resumed[-1] if resumed else run_dir / "config.yaml"


def changes(saved: dict[str, Any], now: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{dotted field: (before, now)}`` of the fields that differ. Fields of :data:`IGNORED`, and fields only one
    side knows (a field added to raft-diffusion since the run started), are left out."""
    a, b = flatten(saved), flatten(now)
    return {k: (a[k], b[k]) for k in sorted(set(a) & set(b)) if a[k] != b[k] and k not in IGNORED}


def _free(name: str) -> bool:
    return any(name == f or (f.endswith(".") and name.startswith(f)) for f in FREE)


def check(cfg: Any, run_dir: Path, rounds_done: int) -> dict[str, tuple[Any, Any]]:
    """The changes between the run's last config and ``cfg``; raises when one is refused (see the module doc)."""
    path = latest_config(run_dir)
    if not path.is_file():
        return {}
    from raft_diffusion.config import read_yaml

    diff = changes(read_yaml(path), cfg.to_dict())
    for name in FIXED:
        if name in diff:
            before, now = diff[name]
            raise ModelError(
                f"cannot resume {str(run_dir)!r}: it was trained with {name} = {before!r}, this config has {now!r}; "
                "resume with the run's own config or start a new --output.dir"
            )
    allow = cfg.output.allow_config_change
    fix = ("resume with the run's own config, start a new --output.dir, or pass --allow-changes "
           "(output.allow_config_change) to continue and record the change")
    if cfg.raft.rounds < rounds_done and not allow:
        raise ConfigError(
            f"cannot resume {str(run_dir)!r}: raft.rounds = {cfg.raft.rounds} is fewer than the {rounds_done} rounds "
            f"already done; give raft.rounds >= {rounds_done}, or {fix}"
        )
    meaning = [k for k in diff if not _free(k)]
    if meaning and not allow:
        name = meaning[0]
        before, now = diff[name]
        more = f" (and {len(meaning) - 1} more: {', '.join(meaning[1:4])}{'...' if len(meaning) > 4 else ''})" if len(meaning) > 1 else ""
        raise ConfigError(
            f"cannot resume {str(run_dir)!r}: {name} was {before!r}, this config has {now!r}{more}; that changes what "
            f"its completed rounds mean; {fix}"
        )
    return diff


def record(cfg: Any, run_dir: Path, diff: dict[str, tuple[Any, Any]], next_round: int) -> Path | None:
    """Append the change to ``config-changes.jsonl`` and save ``config.resume-N.yaml``; None when nothing changed."""
    if not diff:
        return None
    from raft_diffusion.core.records import read_jsonl, write_jsonl

    rows = read_jsonl(run_dir / CHANGES)
    n = len(rows) + 1
    path = run_dir / f"config.resume-{n}.yaml"
    from raft_diffusion.core.atomic import atomic_path

    with atomic_path(path) as tmp:
        cfg.to_yaml(tmp)
    rows.append({"resume": n, "from_round": next_round, "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                 "allowed_by_flag": bool(cfg.output.allow_config_change), "config": path.name,
                 "changes": {k: {"before": a, "now": b} for k, a, b in ((k, *v) for k, v in diff.items())}})
    write_jsonl(run_dir / CHANGES, rows)
    log.warning("resumed with %d changed setting(s) (%s); recorded in %s and %s", len(diff),
                ", ".join(f"{k}: {json.dumps(a, default=str)} -> {json.dumps(b, default=str)}" for k, (a, b) in list(diff.items())[:4]),
                CHANGES, path.name)
    return path
