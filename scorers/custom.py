"""User rewards: a Python callable, or a "module:function" reference given in a config."""

from __future__ import annotations

import importlib
import inspect
import logging
import sys
from typing import Any, Callable, Sequence

import torch

from raft_diffusion.errors import ScorerError

log = logging.getLogger(__name__)


def import_object(ref: str) -> Any:
    """Import ``"package.module:attr"`` (``attr`` may be dotted). Raises ScorerError with the fix."""
    if not isinstance(ref, str) or ":" not in ref:
        raise ScorerError(f"custom scorer {ref!r} must look like 'package.module:function'")
    module_name, _, attr = ref.partition(":")
    if not module_name or module_name.startswith(".") or not attr:
        raise ScorerError(f"custom scorer {ref!r} must look like 'package.module:function' (an absolute module, "
                          "then a name); relative and empty names cannot be imported")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ScorerError(
            f"custom scorer {ref!r}: cannot import module {module_name!r} ({exc}); "
            "check the name and that it is on PYTHONPATH"
        ) from None
    except SyntaxError as exc:
        raise ScorerError(f"custom scorer {ref!r}: module {module_name!r} has a syntax error ({exc.filename}, line "
                          f"{exc.lineno}); fix the module") from None
    except Exception as exc:  # noqa: BLE001 - the module's own code failed while importing
        raise ScorerError(f"custom scorer {ref!r}: importing module {module_name!r} raised {type(exc).__name__}: {exc}; "
                          "fix the module (rerun with -v for the traceback)") from exc
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ScorerError(f"custom scorer {ref!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    where = getattr(sys.modules.get(module_name), "__file__", None) or "built-in"
    log.info("imported custom callable %s (from %s): a config naming code runs that code", ref, where)
    return obj


class CallableScorer:
    """Wraps a user function as a scorer.

    Accepted signatures: ``fn(outputs, prompts, metadata)`` (batched, returns (N,)), or with
    ``per_sample=True`` ``fn(output, prompt, metadata) -> float`` called once per sample.
    """

    def __init__(self, fn: Callable[..., Any], name: str | None = None, per_sample: bool = False) -> None:
        if not callable(fn):
            raise ScorerError(f"custom scorer {fn!r} is not callable; pass a function or 'module:function'")
        self.fn = fn
        self.name = name or getattr(fn, "__qualname__", repr(fn))
        self.per_sample = per_sample

    def __call__(self, outputs: Any, prompts: Sequence[str], metadata: Sequence[dict[str, Any]]) -> torch.Tensor:
        if not self.per_sample:
            return self.fn(outputs, prompts, metadata)
        return torch.tensor(
            [float(self.fn(o, p, m)) for o, p, m in zip(outputs, prompts, metadata)], dtype=torch.float32
        )


def from_reference(ref: str, per_sample: bool = False, **kwargs: Any) -> CallableScorer:
    """Load ``"module:function"``. A class or factory is called with ``kwargs`` to build the scorer."""
    obj = import_object(ref)
    if kwargs or (inspect.isclass(obj)):
        obj = obj(**kwargs)
    return CallableScorer(obj, name=ref, per_sample=per_sample)
