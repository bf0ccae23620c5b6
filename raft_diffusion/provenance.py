"""Which model weights a run used: ``models.json`` in the run folder.

The loaders call :func:`record` for every model they read (the pipeline or causal LM, a scorer's weights
file or backbone); :func:`write` saves, for each, the hub id and the commit it resolved to (read from the
Hugging Face cache: a snapshot path, or the cache's ``refs/<revision>``), or the local folder's path.
A hub id downloads into the Hugging Face cache on first use, as in diffusers and transformers
(``HF_HUB_OFFLINE=1`` forbids it); the commit recorded here says which files the run saw.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MODELS = "models.json"
_SNAPSHOT = re.compile(r"models--(?P<owner>[^/]+?)--(?P<name>[^/]+)/snapshots/(?P<commit>[0-9a-f]{40})")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_USED: list[dict[str, Any]] = []


def reset() -> None:
    """Forget what was recorded (a new run starts)."""
    _USED.clear()


def record(role: str, source: str | os.PathLike[str], revision: str | None = None, cache_dir: str | None = None) -> None:
    """Note that ``source`` (a hub id, a hub-cache path or a local path) was loaded as ``role``."""
    entry = {"role": role, "source": os.fspath(source), "revision": revision, "cache_dir": cache_dir}
    if entry not in _USED:
        _USED.append(entry)
        log.debug("model used: %s = %s", role, entry["source"])


def cached_commit(repo_id: str, revision: str | None = None, cache_dir: str | None = None) -> str | None:
    """The commit ``revision`` (default ``main``) of hub repo ``repo_id`` resolved to in the local cache."""
    if revision and _COMMIT.match(revision):
        return revision
    try:
        from huggingface_hub import constants
        from huggingface_hub.file_download import repo_folder_name
    except ImportError:  # pragma: no cover - ships with diffusers and transformers
        return None
    ref = Path(cache_dir or constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type="model") / "refs" / (revision or "main")
    try:
        text = ref.read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return text if _COMMIT.match(text) else None


def describe(source: str | os.PathLike[str], revision: str | None = None, cache_dir: str | None = None) -> dict[str, Any]:
    """``{"hub_id", "revision", "commit"}`` for a hub id or a hub-cache path, ``{"path"}`` for a local one."""
    text = os.fspath(source)
    snap = _SNAPSHOT.search(text.replace("\\", "/"))
    if snap:
        return {"hub_id": f"{snap['owner']}/{snap['name']}", "commit": snap["commit"], "path": text}
    path = Path(text).expanduser()
    if path.exists():
        return {"path": str(path.resolve())}
    return {"hub_id": text, "revision": revision, "commit": cached_commit(text, revision, cache_dir)}


def collect(cfg: Any) -> list[dict[str, Any]]:
    """One entry per model the run loaded (see :func:`record`), plus ``model.vae`` when the config names one."""
    entries = [{"role": u["role"], "name": u["source"], **describe(u["source"], u["revision"], u["cache_dir"])} for u in _USED]
    vae = getattr(cfg.model, "vae", None)
    if vae and not any(e["role"] == "model.vae" for e in entries):
        entries.append({"role": "model.vae", "name": vae, **describe(vae, getattr(cfg.model, "revision", None))})
    return entries


def write(run_dir: Path, cfg: Any) -> Path:
    """``models.json`` (or, on a resume that now resolves differently, ``models.resume-N.json``); returns it."""
    from raft_diffusion.core.atomic import atomic_path

    entries = collect(cfg)
    for e in entries:
        if "hub_id" in e and e.get("commit") is None:
            log.warning("hub model %r (%s): its commit is not in the Hugging Face cache; models.json records no commit",
                        e["hub_id"], e["role"])
    data = {"models": entries, "hf_hub_offline": os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0", "false")}
    path = Path(run_dir) / MODELS
    if path.is_file():
        before = _read(path)
        if before is not None and all(e in before for e in json.loads(json.dumps(entries))):
            return path
        n = len(list(Path(run_dir).glob("models.resume-*.json"))) + 1
        path = Path(run_dir) / f"models.resume-{n}.json"
        log.warning("the models resolve differently than when the run started; recorded in %s", path.name)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    return path


def _read(path: Path) -> list[dict[str, Any]] | None:
    try:
        models = json.loads(path.read_text(encoding="utf-8")).get("models")
    except (OSError, ValueError, AttributeError):
        return None
    return models if isinstance(models, list) else None


def update(path: Path, cfg: Any) -> None:
    """Add to ``path`` (what :func:`write` returned) the models loaded since, e.g. a scorer whose backbone
    loads on first use."""
    from raft_diffusion.core.atomic import atomic_path

    known = _read(path)
    if known is None:
        return
    new = [e for e in json.loads(json.dumps(collect(cfg))) if e not in known]
    if new:
        data = json.loads(path.read_text(encoding="utf-8"))
        data["models"] = known + new
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
