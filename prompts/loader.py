"""``load(source)``: prompts from a registered set name or a ``.txt``/``.jsonl``/``.csv`` path.

Sets live in one strict registry (:data:`REGISTRY`); ``register`` adds user sets. A set's
factory takes no arguments and returns an iterable of :class:`Prompt` or ``str``. Plugins
(:mod:`raft_diffusion.plugins`) add sets: they load on the first unknown name or listing.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Union

from prompts.files import READERS, read_file
from prompts.types import Prompt
from raft_diffusion.errors import PromptError
from raft_diffusion.registry import Registry

logger = logging.getLogger(__name__)

#: What a prompt-set factory returns.
PromptSetFactory = Callable[[], Iterable[Union[Prompt, str]]]

REGISTRY: Registry[Iterable[Union[Prompt, str]]] = Registry("prompt set", PromptError)


def register(name: str, loader: PromptSetFactory, description: str = "") -> PromptSetFactory:
    """Register a prompt set: ``loader()`` returns prompts (``Prompt`` or ``str``); duplicates are refused."""
    if not callable(loader):
        raise PromptError(
            f"prompt set {name!r}: loader must be a callable returning prompts, got {type(loader).__name__}"
        )
    return REGISTRY.register(name, loader, description)


def _load_plugins() -> None:
    from raft_diffusion.plugins import load_plugins

    load_plugins()


def available() -> list[str]:
    """Registered prompt-set names (plugins' included), sorted."""
    _load_plugins()
    return REGISTRY.names()


def describe() -> list[tuple[str, str]]:
    """(name, one-line description) for every registered prompt set (plugins' included), sorted by name."""
    _load_plugins()
    return [(e.name, e.description) for e in REGISTRY]


def _unknown_name(name: str) -> PromptError:
    known = ", ".join(available()) or "(none)"
    return PromptError(
        f"unknown prompt set {name!r}; known prompt sets: {known}; "
        f"or pass a path ending {', '.join(READERS)}"
    )


def _normalise(name: str, items: Iterable[Union[Prompt, str]]) -> list[Prompt]:
    """Turn a set factory's output into Prompts carrying ``set``, ``index`` and ``label``."""
    try:
        items = list(items)
    except TypeError:
        raise PromptError(
            f"prompt set {name!r} returned {type(items).__name__}, not an iterable; return a list of prompts"
        ) from None
    out: list[Prompt] = []
    for i, item in enumerate(items):
        if isinstance(item, Prompt):
            text, metadata = item.text, dict(item.metadata)
        elif isinstance(item, str):
            text, metadata = item, {}
        else:
            raise PromptError(
                f"prompt set {name!r} item {i} is a {type(item).__name__}; return str or Prompt items"
            )
        if not isinstance(text, str) or not text.strip():
            raise PromptError(f"prompt set {name!r} item {i} has empty text {text!r}; drop or fill it")
        metadata.setdefault("set", name)
        metadata.setdefault("index", i)
        metadata.setdefault("label", text)
        out.append(Prompt(text=text.strip(), metadata=metadata))
    if not out:
        raise PromptError(f"prompt set {name!r} has no prompts; its loader must return at least one")
    return out


def _check_template(template: object) -> None:
    if template is None:
        return
    if not isinstance(template, str) or "{}" not in template:
        raise PromptError(
            f"prompt template {template!r} has no '{{}}' placeholder; write e.g. 'a photo of a {{}}'"
        )


def _check_limit(limit: object) -> None:
    if limit is None:
        return
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise PromptError(f"prompt limit must be a positive integer or None, got {limit!r}")


def apply_template(prompts: Iterable[Prompt], template: str) -> list[Prompt]:
    """``template`` with every "{}" replaced by each prompt's text; the raw text stays as ``label``."""
    _check_template(template)
    out = []
    for p in prompts:
        metadata: dict[str, Any] = dict(p.metadata)
        metadata.setdefault("label", p.text)
        metadata["template"] = template
        out.append(Prompt(text=template.replace("{}", p.text), metadata=metadata))
    return out


def load(
    source: str | os.PathLike[str],
    *,
    template: str | None = None,
    limit: int | None = None,
) -> list[Prompt]:
    """Prompts from a registered set name or a ``.txt``/``.jsonl``/``.csv`` file.

    ``template`` ("a photo of a {}") wraps each text; ``limit`` keeps the first ``limit`` prompts.
    """
    _check_template(template)
    _check_limit(limit)
    if isinstance(source, str) and not source.strip():
        raise _unknown_name(source)
    if isinstance(source, str) and source not in REGISTRY and not Path(source).is_file():
        _load_plugins()  # a plugin's set (an existing file is read without loading plugins)
    if isinstance(source, str) and source in REGISTRY:
        prompts = _normalise(source, REGISTRY.build(source))
        origin = f"prompt set {source!r}"
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        looks_like_path = (
            isinstance(source, os.PathLike) or path.suffix != "" or path.exists()
            or os.sep in str(source) or "/" in str(source)
        )
        if not looks_like_path:
            raise _unknown_name(str(source))
        prompts = read_file(path)
        origin = f"file {str(path)!r}"
    else:
        raise PromptError(
            f"prompt source must be a set name or a file path, got {type(source).__name__} {source!r}"
        )
    if limit is not None:
        prompts = prompts[:limit]
    if template is not None:
        prompts = apply_template(prompts, template)
    logger.info("loaded %d prompts from %s", len(prompts), origin)
    return prompts


def _register_builtin() -> None:
    from prompts.sets import BUILTIN_SETS

    for s in BUILTIN_SETS:
        register(s.name, s.load, s.description)


_register_builtin()
