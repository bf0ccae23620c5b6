"""Capture and restore every global RNG (python, numpy, torch) as JSON-able data + a tensor."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def sample_seed(base: int, round_index: int, sample_index: int) -> int:
    """The seed of sample ``sample_index`` of round ``round_index``: independent of batching and
    of which process draws it."""
    return ((base * 1_000_003 + round_index) * 1_000_033 + sample_index) % (2**63 - 1)


def capture() -> dict[str, Any]:
    """JSON-able python/numpy states and the torch CPU state as a uint8 list."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    py = random.getstate()
    return {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state().tolist(),
        "cuda": [s.tolist() for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
    }


def restore(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture`."""
    v, internal, gauss = state["python"]
    random.setstate((v, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])
