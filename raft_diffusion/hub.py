"""``output.push_to_hub``: the run's LoRA (or fine-tuned denoiser), model card, before/after grid and report to a hub repository.

:func:`check_push` runs before training (so a run cannot train for hours and then fail to push for a
missing login). At the end, :func:`create_repo` (``HfApi().create_repo(exist_ok=True)``, which gives the
full 'user/name' id the model card's usage snippet names), then :func:`upload_run`: one
``upload_folder`` commit of the files :func:`upload_patterns` names.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from raft_diffusion.errors import ConfigError, RunError

log = logging.getLogger(__name__)

#: what every push uploads besides the weights (missing ones are skipped by upload_folder)
SHARED_FILES = ("README.md", "before_after.png", "report.html")


def repo_id(cfg: Any, run_dir: Path) -> str:
    """``output.hub_model_id``, else the run folder's name (the hub puts it under your account)."""
    return cfg.output.hub_model_id or Path(run_dir).resolve().name


def upload_patterns(cfg: Any) -> list[str]:
    """allow_patterns of the upload: the LoRA file (diffusion), the denoiser folder (diffusion,
    ``train.adapter: full``) or the adapter folder (llm), and SHARED_FILES."""
    from raft_diffusion.run_folder import DENOISER_FOLDERS

    if cfg.backend == "llm":
        weights = ["adapter/*"]
    elif cfg.train.adapter == "full":
        weights = [f"{name}/*" for name in DENOISER_FOLDERS]
    else:
        weights = ["pytorch_lora_weights.safetensors"]
    return [*weights, *SHARED_FILES]


def check_push(cfg: Any, run_dir: Path) -> None:
    """Fail before training when a push cannot work: a malformed repo id, offline mode, no login."""
    from huggingface_hub import constants, get_token
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    rid = repo_id(cfg, run_dir)
    try:
        validate_repo_id(rid)
    except HFValidationError:
        raise ConfigError(f"output.hub_model_id {rid!r} is not a hub repository id; give 'user/name' "
                          "(letters, digits, '-', '_', '.')") from None
    if constants.HF_HUB_OFFLINE:
        raise ConfigError("output.push_to_hub needs the network but HF_HUB_OFFLINE is set; unset it or set "
                          "output.push_to_hub false (upload later with `hf upload`)")
    if not get_token():
        raise ConfigError("output.push_to_hub needs a Hugging Face login; run `hf auth login` or set HF_TOKEN")


def _failed(cfg: Any, run_dir: Path, rid: str, exc: Exception) -> RunError:
    """One line: the repo, the cause and how to upload the (complete) run folder by hand."""
    cause = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    include = " ".join(f"--include '{p}'" for p in upload_patterns(cfg))
    return RunError(f"pushing the run to the hub repo {rid!r} failed ({cause}); the run folder {str(run_dir)!r} is "
                    f"complete: upload it later with `hf upload {rid} {run_dir} {include}`")


def create_repo(cfg: Any, run_dir: Path) -> str:
    """Create the hub repository (kept when it exists); returns its full id ('user/name')."""
    from huggingface_hub import HfApi

    rid = repo_id(cfg, run_dir)
    try:
        url = HfApi().create_repo(rid, repo_type="model", exist_ok=True)
    except Exception as exc:  # noqa: BLE001 - network, auth, permissions
        raise _failed(cfg, run_dir, rid, exc) from exc
    return getattr(url, "repo_id", None) or rid


def upload_run(cfg: Any, run_dir: Path, rid: str) -> str:
    """One ``upload_folder`` commit of the run's files (:func:`upload_patterns`) to ``rid``; returns rid."""
    from huggingface_hub import HfApi

    try:
        HfApi().upload_folder(repo_id=rid, folder_path=str(run_dir), repo_type="model",
                              allow_patterns=upload_patterns(cfg), commit_message=f"RAFT run {Path(run_dir).resolve().name}")
    except Exception as exc:  # noqa: BLE001 - network, auth, permissions: one line, and the folder is complete
        raise _failed(cfg, run_dir, rid, exc) from exc
    log.info("pushed the run to https://huggingface.co/%s", rid)
    return rid
