"""``PromptStream``: endless, seeded, resumable batches of prompts for RAFT rounds.

Each pass (epoch) over the set is its own permutation, drawn from
``random.Random(f"{seed}-{epoch}")`` (no global RNG). A batch that reaches the end of a pass
continues into the next one, so after any whole number of passes every prompt has been drawn
equally often. ``state_dict()`` is JSON-serialisable; ``load_state_dict`` resumes exactly.
"""

from __future__ import annotations

import logging
import random
from typing import Any, Iterator, Sequence

from prompts.types import Prompt
from raft_diffusion.errors import PromptError

logger = logging.getLogger(__name__)

#: Largest accepted batch size (a guard against typos such as 10**9).
MAX_BATCH_SIZE = 65536

_STATE_VERSION = 1


def _check_int(name: str, value: object, low: int | None = None, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise PromptError(f"prompt stream {name} must be an integer, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f">= {low}"
        raise PromptError(f"prompt stream {name} must be {bounds}, got {value!r}")
    return value


class PromptStream:
    """Yields ``batch_size`` prompts per :meth:`next_batch`, cycling through ``prompts`` forever."""

    def __init__(self, prompts: Sequence[Prompt], batch_size: int, *, seed: int = 0, shuffle: bool = True) -> None:
        self._prompts: tuple[Prompt, ...] = tuple(prompts)
        if not self._prompts:
            raise PromptError("prompt stream needs at least one prompt, got an empty list; load a prompt set first")
        self.batch_size = _check_int("batch_size", batch_size, 1, MAX_BATCH_SIZE)
        self.seed = _check_int("seed", seed)
        self.shuffle = bool(shuffle)
        self.epoch = 0
        self.cursor = 0
        self._order_epoch = -1
        self._order: list[int] = []
        if self.batch_size > len(self._prompts):
            logger.warning(
                "batch_size %d exceeds the %d prompts: prompts repeat within a batch",
                self.batch_size, len(self._prompts),
            )

    @property
    def prompts(self) -> tuple[Prompt, ...]:
        """The prompts, in their original order."""
        return self._prompts

    @property
    def size(self) -> int:
        """Number of prompts in one pass."""
        return len(self._prompts)

    def order(self, epoch: int) -> list[int]:
        """Indices (into :attr:`prompts`) visited in pass ``epoch``; deterministic from seed and epoch."""
        indices = list(range(len(self._prompts)))
        if self.shuffle:
            random.Random(f"{self.seed}-{epoch}").shuffle(indices)
        return indices

    def _current_order(self) -> list[int]:
        if self._order_epoch != self.epoch:
            self._order = self.order(self.epoch)
            self._order_epoch = self.epoch
        return self._order

    def next_batch(self) -> list[Prompt]:
        """The next ``batch_size`` prompts, crossing into the next pass when this one runs out."""
        batch: list[Prompt] = []
        n = len(self._prompts)
        while len(batch) < self.batch_size:
            if self.cursor >= n:
                self.epoch += 1
                self.cursor = 0
            order = self._current_order()
            take = min(self.batch_size - len(batch), n - self.cursor)
            batch.extend(self._prompts[i] for i in order[self.cursor:self.cursor + take])
            self.cursor += take
        return batch

    def __iter__(self) -> Iterator[list[Prompt]]:
        """Endless iterator of batches (use ``itertools.islice`` or :meth:`next_batch`)."""
        return self

    def __next__(self) -> list[Prompt]:
        return self.next_batch()

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable position: seed, epoch, cursor (within the pass), shuffle, set size."""
        return {
            "version": _STATE_VERSION,
            "seed": self.seed,
            "epoch": self.epoch,
            "cursor": self.cursor,
            "shuffle": self.shuffle,
            "size": len(self._prompts),
            "batch_size": self.batch_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from :meth:`state_dict` output; the set size must match (batch size may differ)."""
        if not isinstance(state, dict):
            raise PromptError(f"prompt stream state must be a dict from state_dict(), got {type(state).__name__}")
        missing = [k for k in ("seed", "epoch", "cursor") if k not in state]
        if missing:
            raise PromptError(f"prompt stream state lacks {missing}; pass the dict state_dict() returned")
        size = state.get("size", len(self._prompts))
        if size != len(self._prompts):
            raise PromptError(
                f"prompt stream state was saved for {size!r} prompts but this stream has {len(self._prompts)}; "
                "resume with the same prompt set"
            )
        seed = _check_int("seed", state["seed"])
        epoch = _check_int("epoch", state["epoch"], 0)
        cursor = _check_int("cursor", state["cursor"], 0, len(self._prompts))
        batch_size = state.get("batch_size", self.batch_size)
        if batch_size != self.batch_size:
            logger.info("resuming prompt stream with batch_size %d (saved with %s)", self.batch_size, batch_size)
        self.seed, self.epoch, self.cursor = seed, epoch, cursor
        self.shuffle = bool(state.get("shuffle", self.shuffle))
        self._order_epoch = -1
