"""Model aliases: short names for ``model.pretrained`` that resolve to a local folder.

A plugin (see :mod:`raft_diffusion.plugins`) registers an alias with a zero-argument factory
returning the folder, e.g. the miniworld's ``miniworld`` -> its committed pipeline folder.
:func:`resolve_model` turns a ``model.pretrained`` value into what the loaders read: an alias's
folder, or the value unchanged (a hub id or a path).
"""

from __future__ import annotations

import os
from typing import Callable, Union

from raft_diffusion.errors import ModelError
from raft_diffusion.registry import Registry

#: What an alias's factory returns: the model's local folder.
ModelPath = Union[str, "os.PathLike[str]"]

MODEL_ALIASES: Registry[ModelPath] = Registry("model alias", ModelError, plural="model aliases")


def register_model_alias(name: str, factory: Callable[[], ModelPath], description: str = "") -> Callable[[], ModelPath]:
    """Register ``name`` as an alias of the folder ``factory()`` returns; duplicates are refused."""
    if not callable(factory):
        raise ModelError(f"model alias {name!r}: factory must be a callable returning a folder, got {factory!r}")
    return MODEL_ALIASES.register(name, factory, description)


def model_aliases() -> list[tuple[str, str]]:
    """(name, one-line description) of every registered alias (plugins loaded), sorted by name."""
    from raft_diffusion.plugins import load_plugins

    load_plugins()
    return [(e.name, e.description) for e in MODEL_ALIASES]


def resolve_model(name: str) -> str:
    """The folder of the alias ``name`` (plugins loaded first), else ``name`` unchanged."""
    if not isinstance(name, str):
        return name
    if name not in MODEL_ALIASES:
        from raft_diffusion.plugins import load_plugins

        load_plugins()
        if name not in MODEL_ALIASES:
            return name
    path = MODEL_ALIASES.build(name)
    if not isinstance(path, (str, os.PathLike)):
        raise ModelError(f"model alias {name!r} returned {type(path).__name__}, not a folder path; fix its plugin")
    return os.fspath(path)


__all__ = ["MODEL_ALIASES", "model_aliases", "register_model_alias", "resolve_model"]
