"""Shared machinery of the built-in scorers: input checks, internal batching, no-grad, output validation.

:class:`BaseScorer` subclasses implement ``load()`` (idempotent, lazy) and ``score_batch``; calling
the scorer checks the inputs, loads once, runs ``score_batch`` over chunks of ``batch_size`` under
``torch.inference_mode()`` and passes the result through :func:`scorers.base.validate_rewards`
with the scorer's name. :class:`ValidatedScorer` gives any callable the same output check.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from raft_diffusion.errors import ScorerError
from scorers.base import check_images, num_outputs, validate_rewards


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` -> CUDA when available, else CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    """``"float32"`` / ``"float16"`` / ``"bfloat16"`` (or a torch dtype) -> torch dtype; default float32."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[str(dtype)]
    except KeyError:
        raise ScorerError(f"unknown dtype {dtype!r}; use one of {sorted(_DTYPES)}") from None


def check_batch(outputs: Any, prompts: Sequence[str], metadata: Sequence[dict[str, Any]] | None,
                name: str) -> tuple[int, list[str], list[dict[str, Any]]]:
    """N, prompts and metadata as lists of length N (metadata ``None`` -> empty dicts)."""
    n = num_outputs(outputs)
    if isinstance(prompts, str):
        prompts = [prompts] * n
    prompts = list(prompts)
    metadata = [{} for _ in range(n)] if metadata is None else list(metadata)
    if len(prompts) != n or len(metadata) != n:
        raise ScorerError(
            f"scorer {name!r} got {n} outputs, {len(prompts)} prompts and {len(metadata)} metadata dicts; "
            "pass one prompt and one metadata dict per output"
        )
    return n, prompts, metadata


class BaseScorer:
    """Base of the built-in scorers. Subclasses set ``kind`` ("image" or "text") and implement
    :meth:`score_batch`; heavy state is built in :meth:`load`, which runs once, on first use."""

    kind = "image"
    name = "scorer"
    #: True when the subclass implements ``device`` and ``to(device)`` (see :mod:`scorers.offload`)
    supports_offload = False
    #: True when the reward reads the prompt (an empty prompt would score nonsense)
    needs_prompts = False

    def __init__(self, name: str | None = None, batch_size: int = 32) -> None:
        if name is not None:
            self.name = name
        if int(batch_size) < 1:
            raise ScorerError(f"scorer {self.name!r}: batch_size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        self._loaded = False

    def load(self) -> "BaseScorer":
        """Load weights (once). Safe to call early to fail fast before a long run."""
        if not self._loaded:
            self._load()
            self._loaded = True
        return self

    def _load(self) -> None:
        """Override: build models. Called outside inference mode so parameters are normal tensors."""

    def score_batch(self, outputs: Any, prompts: list[str], metadata: list[dict[str, Any]]) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, outputs: Any, prompts: Sequence[str], metadata: Sequence[dict[str, Any]] | None = None
                 ) -> torch.Tensor:
        if self.kind == "image":
            check_images(outputs, self.name)
        elif isinstance(outputs, str):
            raise ScorerError(f"scorer {self.name!r} needs a list of response strings, got one string")
        n, prompts, metadata = check_batch(outputs, prompts, metadata, self.name)
        if n == 0:
            return torch.zeros(0, dtype=torch.float32)
        self.load()
        parts = []
        with torch.inference_mode():
            for i in range(0, n, self.batch_size):
                j = min(i + self.batch_size, n)
                chunk = outputs[i:j]
                out = self.score_batch(chunk, prompts[i:j], metadata[i:j])
                parts.append(validate_rewards(out, j - i, self.name))
        return validate_rewards(torch.cat(parts), n, self.name)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class ValidatedScorer:
    """Wrap any scorer callable so its output is checked (shape (N,), finite, float32) under ``name``."""

    def __init__(self, scorer: Callable[..., Any], name: str | None = None) -> None:
        if not callable(scorer):
            raise ScorerError(f"scorer {name or scorer!r} is not callable")
        self.scorer = scorer
        self.name = name or getattr(scorer, "name", None) or getattr(scorer, "__qualname__", repr(scorer))

    def __call__(self, outputs: Any, prompts: Sequence[str], metadata: Sequence[dict[str, Any]] | None = None
                 ) -> torch.Tensor:
        n, prompts, metadata = check_batch(outputs, prompts, metadata, self.name)
        return validate_rewards(self.scorer(outputs, prompts, metadata), n, self.name)

    def load(self) -> "ValidatedScorer":
        if hasattr(self.scorer, "load"):
            self.scorer.load()
        return self

    def __repr__(self) -> str:
        return f"ValidatedScorer({self.name!r})"


def validated(scorer: Callable[..., Any], name: str | None = None) -> Callable[..., torch.Tensor]:
    """``scorer`` itself if it already validates (a :class:`BaseScorer`), else a :class:`ValidatedScorer`."""
    if isinstance(scorer, (BaseScorer, ValidatedScorer)):
        return scorer
    return ValidatedScorer(scorer, name)


def component_scores(scorer: Any) -> dict[str, list[float]]:
    """The raw part rewards of ``scorer``'s last call, by part label: the ``last_components`` (label ->
    (N,) tensor) of a scorer with parts, such as ``multi``, also inside :class:`ValidatedScorer` or an
    offloading wrapper; empty for a scorer without parts."""
    while scorer is not None:
        parts = vars(scorer).get("last_components") if hasattr(scorer, "__dict__") else None
        if isinstance(parts, dict):
            return {label: torch.as_tensor(r).double().tolist() for label, r in parts.items()}
        scorer = getattr(scorer, "scorer", None)
    return {}
