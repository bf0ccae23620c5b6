"""What a run folder holds, by name: how a run is recognised and what ``--overwrite`` removes.

``--overwrite`` removes only what a run writes (:data:`RUN_FILES`, :data:`RUN_FOLDERS`, the resume records
and the temporary names of its atomic writes), and ``README.md`` only when it is the run's own model card;
anything else in the folder (your notes, images you generated into it) stays. A folder that is no run is
never cleared.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from raft_diffusion.core.atomic import remove_quietly

log = logging.getLogger(__name__)

#: files a run writes at the top of its folder
RUN_FILES = (
    "config.yaml", "metrics.jsonl", "eval.jsonl", "summary.json", "models.json", "config-changes.jsonl",
    "before_after.png", "reward_curve.png", "report.html", "pytorch_lora_weights.safetensors", "MODEL_CARD.md",
)
#: the denoiser folders a full fine-tune writes (``train.adapter: full``; diffusers' subfolder names)
DENOISER_FOLDERS = ("unet", "transformer")
#: folders a run writes (checkpoints, round and eval records, best weights, tracker logs, the LLM adapter,
#: a fully fine-tuned denoiser)
RUN_FOLDERS = ("checkpoints", "rounds", "eval", "best", "logs", "wandb", "adapter", *DENOISER_FOLDERS)
#: the resume records (config.resume-N.yaml, models.resume-N.json) and the temporary names of interrupted
#: atomic writes (.metrics.jsonl.tmp-PID, .lora-XXXX, .adapter-XXXX, .unet-XXXX, .write-test, .X.best-tmp, .X.old)
RUN_PATTERNS = (
    re.compile(r"^(config\.resume-\d+\.yaml|models\.resume-\d+\.json)$"),
    re.compile(r"^\..+\.tmp(-\d+)?$|^\.(lora|adapter|unet|transformer)-.+$|^\.write-test$|^\..+\.(best-tmp|old)$"),
)
#: what marks a folder as holding a run (checked by name first)
MARKERS = ("config.yaml", "metrics.jsonl", "checkpoints")
CARD = "README.md"


def holds_run_files(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds any file named like a run's (it may still be someone else's)."""
    return run_dir.is_dir() and any((run_dir / m).exists() for m in MARKERS)


def is_run_folder(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a raft-diffusion run: its ``config.yaml`` is a run config, or it has
    round checkpoints, or its ``metrics.jsonl`` holds round rows."""
    if not run_dir.is_dir():
        return False
    config = run_dir / "config.yaml"
    if config.is_file():
        import yaml

        try:
            data = yaml.safe_load(config.read_text(encoding="utf-8"))
        except (OSError, ValueError, yaml.YAMLError):
            data = None
        if isinstance(data, dict) and {"backend", "model", "raft", "output"} <= set(data):
            return True
    ckpts = run_dir / "checkpoints"
    if ckpts.is_dir() and any(re.match(r"^\.?round-\d{4,}", p.name) for p in ckpts.iterdir()):
        return True
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file():
        try:
            first = next((line for line in metrics.read_text(encoding="utf-8").splitlines() if line.strip()), None)
            return first is not None and "round" in json.loads(first)
        except (OSError, ValueError, TypeError):
            return False
    return False


def is_our_card(path: Path) -> bool:
    """Whether ``path`` (a README.md) is a model card a run wrote (it carries the card's marker)."""
    from raft_diffusion.model_card import CARD_MARKER

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, ValueError):
        return False
    return CARD_MARKER in text or "fine-tuned with RAFT (Reward rAnked FineTuning) by raft-diffusion" in text


def run_entries(run_dir: Path) -> list[Path]:
    """The entries of ``run_dir`` a run wrote (see the module doc), sorted by name."""

    def ours(entry: Path) -> bool:
        name = entry.name
        if name in RUN_FOLDERS:
            return entry.is_dir()
        if name in RUN_FILES:
            return not entry.is_dir()
        if name == CARD:
            return entry.is_file() and is_our_card(entry)
        return any(p.match(name) for p in RUN_PATTERNS)

    return [entry for entry in sorted(run_dir.iterdir()) if ours(entry)]


def clear_run(run_dir: Path) -> list[str]:
    """Remove what a run wrote in ``run_dir`` (``--overwrite``); returns the names removed. Other files stay."""
    removed = []
    for entry in run_entries(run_dir):
        remove_quietly(entry)
        removed.append(entry.name)
    kept = sorted(p.name for p in run_dir.iterdir())
    log.warning("overwriting the run in %s: removed %s%s", run_dir, ", ".join(removed) or "nothing",
                f"; kept files that are not the run's: {', '.join(kept)}" if kept else "")
    return removed
