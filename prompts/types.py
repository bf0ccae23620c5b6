"""The Prompt record every stage of a round passes along."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Prompt:
    """A prompt: its text and free-form metadata (class label, split, reference answer, ...)."""

    text: str
    metadata: dict[str, Any] = field(default_factory=dict)
