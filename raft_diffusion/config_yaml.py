"""Strict YAML for configs: a key repeated in one mapping is an error, not a silent "last one wins"."""

from __future__ import annotations

from typing import Any

import yaml

from raft_diffusion.errors import ConfigError

_MERGE = "tag:yaml.org,2002:merge"


class DuplicateKey(yaml.YAMLError):
    """A mapping repeats a key (carries the key and both lines)."""

    def __init__(self, key: Any, line: int, first: int) -> None:
        super().__init__(f"key {key!r} at line {line} repeats line {first}")
        self.key, self.line, self.first = key, line, first


class StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a mapping holding the same key twice (merge keys ``<<`` may still
    be overridden, as YAML intends)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE:
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise DuplicateKey(key, line, seen[key])
            except TypeError:  # an unhashable key: SafeLoader reports it
                continue
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def load(text: str) -> Any:
    """Parse ``text`` with :class:`StrictLoader` (raises ``yaml.YAMLError``, :class:`DuplicateKey` included)."""
    return yaml.load(text, Loader=StrictLoader)


def load_config_text(text: str, where: str) -> Any:
    """Parse a config file's text; one-line :class:`ConfigError` naming ``where`` for invalid YAML or a repeated key."""
    try:
        return load(text)
    except DuplicateKey as exc:
        raise ConfigError(
            f"{where} repeats the key {exc.key!r} at line {exc.line} (first at line {exc.first}); keep one of them"
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{where} is not valid YAML{at}; fix the syntax") from None
