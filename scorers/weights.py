"""Where a scorer's weights come from: a local path or a Hugging Face hub id (downloaded into the Hugging
Face cache on first use, as in transformers; ``HF_HUB_OFFLINE=1`` forbids it). Each file or model used
is recorded in the run's ``models.json`` (:mod:`raft_diffusion.provenance`).

- :func:`resolve_file` turns ``source`` (a local file, a local folder holding ``filename``, or a hub id
  ``org/name``) into a local file path. Only a hub id reaches ``huggingface_hub.hf_hub_download``;
  offline (``HF_HUB_OFFLINE=1``) it answers from the local cache only. Every failure is a one-line
  :class:`ScorerError` naming the file that is needed and where to put it.
- :func:`load_state_dict` reads ``.safetensors`` or ``.pth``/``.pt``/``.bin`` files (``torch.load``
  always with ``weights_only=True``), unwraps ``{"state_dict": ...}`` and ``module.`` prefixes.
- :func:`from_pretrained` calls a transformers ``from_pretrained`` and turns its missing-file /
  offline errors into the same kind of message.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Callable

import torch

from raft_diffusion.errors import ScorerError

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


def is_hub_id(source: str) -> bool:
    """True when ``source`` looks like ``org/name`` and is not an existing local path."""
    return bool(_HUB_ID.match(str(source))) and not os.path.exists(source)


def resolve_file(source: str | os.PathLike[str] | None, filename: str | None = None, *, what: str = "scorer",
                 cache_dir: str | None = None, revision: str | None = None, arg: str = "weights") -> Path:
    """Local path of a weights file.

    ``source``: a local file; a local folder (then ``filename`` inside it); or a hub id (then
    ``filename`` in that repository, from the Hugging Face cache when offline). ``what`` names the
    scorer and ``arg`` the factory argument in the error message.
    """
    if source is None or str(source) == "":
        need = filename or "a weights file"
        raise ScorerError(
            f"{what}: no weights given; download {need} and pass its path (e.g. --scorer-arg {arg}=/path/to/{need})"
        )
    path = Path(os.path.expanduser(str(source)))
    if path.is_file():
        return _used(what, path)
    if path.is_dir():
        if filename is None:
            raise ScorerError(f"{what}: {path} is a folder; pass the weights file itself or its file name")
        if (path / filename).is_file():
            return _used(what, path / filename)
        raise ScorerError(f"{what}: weights file {filename!r} not found in {path}; put {filename} there or pass its path")
    if is_hub_id(str(source)):
        if filename is None:
            raise ScorerError(f"{what}: hub id {source!r} needs a file name (filename=...)")
        return _used(what, _hub_download(str(source), filename, what=what, cache_dir=cache_dir, revision=revision, arg=arg))
    need = f" ({filename})" if filename else ""
    raise ScorerError(
        f"{what}: weights {str(source)!r}{need} not found; it is neither a local file or folder nor a hub id "
        f"like org/name; download the file and pass its path"
    )


def _used(what: str, path: Path) -> Path:
    """Record the weights file in the run's models.json (a hub-cache path names its repo and commit)."""
    from raft_diffusion import provenance

    provenance.record(f"scorer {what}", path)
    return path


def _hub_download(repo_id: str, filename: str, *, what: str, cache_dir: str | None, revision: str | None,
                  arg: str) -> Path:
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:  # pragma: no cover - huggingface_hub ships with transformers
        raise ScorerError(f"{what}: huggingface_hub is not installed; download {filename} and pass its path") from None
    try:
        return Path(hf_hub_download(repo_id, filename, cache_dir=cache_dir, revision=revision))
    except Exception as exc:  # offline, not cached, repo or file missing, network errors
        raise ScorerError(missing_message(what, repo_id, filename, exc, arg)) from None


def missing_message(what: str, repo_id: str, filename: str, exc: BaseException | None = None,
                    arg: str = "weights") -> str:
    """The one-line message for a hub file that could not be fetched."""
    why = f" ({type(exc).__name__})" if exc is not None else ""
    return (
        f"{what}: weights file {filename!r} from hub repo {repo_id!r} is not available{why}; "
        f"without network, run `hf download {repo_id} {filename}` on a connected machine to fill the "
        f"Hugging Face cache, or download it anywhere and pass its local path ({arg}=/path/to/{filename})"
    )


def load_state_dict(path: str | os.PathLike[str], *, what: str = "scorer") -> dict[str, torch.Tensor]:
    """State dict from ``.safetensors`` or a torch file (``weights_only=True``), on CPU."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path), device="cpu")
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ScorerError(f"{what}: cannot read weights file {path}: {type(exc).__name__}: {exc}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ScorerError(f"{what}: {path} does not hold a state dict of tensors")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return dict(state)


def from_pretrained(loader: Callable[..., Any], source: str | os.PathLike[str], *, what: str, **kwargs: Any) -> Any:
    """``loader(source, **kwargs)`` (a transformers ``from_pretrained``) with one-line errors."""
    src = str(source)
    local = os.path.isdir(os.path.expanduser(src))
    if not local and not is_hub_id(src):
        raise ScorerError(f"{what}: model {src!r} is neither a local folder nor a hub id like org/name")
    try:
        model = loader(os.path.expanduser(src) if local else src, **kwargs)
    except (OSError, ValueError, EnvironmentError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        where = (
            f"the folder {src}" if local
            else f"hub repo {src!r} (offline: run `hf download {src}` on a connected machine, or pass a local folder)"
        )
        raise ScorerError(f"{what}: cannot load {where}: {first}") from None
    from raft_diffusion import provenance

    provenance.record(f"scorer {what}", os.path.expanduser(src) if local else src, kwargs.get("revision"),
                      kwargs.get("cache_dir"))
    return model
