"""A strict name -> factory registry used for scorers, prompt sets and presets.

Duplicates are refused; an unknown name raises with the sorted list of known names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Generic, Iterator, TypeVar

from raft_diffusion.errors import RaftError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered item: its name, the factory that builds it, and a one-line description."""

    name: str
    factory: Callable[..., T]
    description: str


class Registry(Generic[T]):
    """Maps names to factories. ``kind`` names the registry in error messages ("scorer", ...);
    ``plural`` is its plural there (default: ``kind + "s"``)."""

    def __init__(self, kind: str, error: type[RaftError] = RaftError, plural: str | None = None) -> None:
        self.kind = kind
        self.plural = plural or f"{kind}s"
        self.error = error
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, factory: Callable[..., T], description: str = "") -> Callable[..., T]:
        """Add ``name``; raises if it is already registered or not a non-empty string."""
        if not isinstance(name, str) or not name.strip():
            raise self.error(f"{self.kind} name must be a non-empty string, got {name!r}")
        if name in self._entries:
            raise self.error(
                f"{self.kind} {name!r} is already registered; choose another name"
            )
        self._entries[name] = Entry(name, factory, description)
        return factory

    def decorator(self, name: str, description: str = "") -> Callable[[Callable[..., T]], Callable[..., T]]:
        """``@registry.decorator("name", "what it does")`` form of :meth:`register`."""

        def wrap(factory: Callable[..., T]) -> Callable[..., T]:
            return self.register(name, factory, description)

        return wrap

    def entry(self, name: str) -> Entry[T]:
        """The entry for ``name``; an unknown name raises with the list of known ones."""
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "(none)"
            raise self.error(f"unknown {self.kind} {name!r}; known {self.plural}: {known}") from None

    def build(self, name: str, /, **kwargs: object) -> T:
        """Call the factory registered under ``name`` with ``kwargs``."""
        return self.entry(name).factory(**kwargs)

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(self._entries[n] for n in self.names())

    def __len__(self) -> int:
        return len(self._entries)
