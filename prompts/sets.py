"""The built-in prompt sets, stored one label per line under ``prompts/data/``.

Each prompt's metadata is ``{"set": name, "index": class index, "label": raw label}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Callable

from prompts.files import read_lines
from prompts.types import Prompt


def _identity(label: str) -> str:
    return label


def _underscores_to_spaces(label: str) -> str:
    return label.replace("_", " ")


@dataclass(frozen=True)
class BuiltinSet:
    """A prompt set shipped as ``prompts/data/<file>``; ``render`` turns a raw label into text."""

    name: str
    file: str
    description: str
    render: Callable[[str], str] = _identity

    def load(self) -> list[Prompt]:
        """The set's prompts, in file order (index = class id)."""
        with resources.as_file(resources.files("prompts") / "data" / self.file) as path:
            lines = read_lines(path)
        return [
            Prompt(text=self.render(label), metadata={"set": self.name, "index": i, "label": label})
            for i, (_, label) in enumerate(lines)
        ]


BUILTIN_SETS: tuple[BuiltinSet, ...] = (
    BuiltinSet("cifar10", "cifar10.txt",
               "the 10 CIFAR-10 class names (RAFT's in-domain set)"),
    BuiltinSet("cifar100", "cifar100.txt",
               "the 100 CIFAR-100 fine class names, underscores as spaces (RAFT's out-of-domain set)",
               _underscores_to_spaces),
    BuiltinSet("simple_animals", "simple_animals.txt",
               "DDPO's 45 simple animals (cat, dog, horse, ...)"),
    BuiltinSet("imagenet_animals", "imagenet_animals.txt",
               "DDPO's 398 ImageNet-1k animal classes (class ids 0-397)"),
)
