"""Multi-reward: a weighted sum of component rewards, each normalised per prompt first.

``reward = sum_i w_i * norm(r_i)`` where ``norm`` is, within each prompt group:

- ``raw``: the component's reward unchanged (scales must already agree);
- ``zscore``: ``(r - mean) / std`` over the group's K samples (population std; a constant group
  gives 0);
- ``rank``: the within-group rank scaled to [0, 1] (ties share their average rank; a group of
  one gives 0.5).

``zscore`` and ``rank`` are invariant to a positive scale (and a shift) of any one component, so
rewards on different scales mix. Groups: ``metadata[i]["group"]`` when every sample has it,
otherwise runs of consecutive identical prompts (the K samples of a prompt arrive together).
The raw component rewards of the last call are kept in ``last_components``: the loop records their
means (:func:`scorers.common.component_scores`), since a z-scored sum's mean is 0 by construction.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import torch

from raft_diffusion.errors import ScorerError
from scorers.common import check_batch, validated
from scorers.base import validate_rewards

MODES = ("raw", "zscore", "rank")


def prompt_groups(prompts: Sequence[str], metadata: Sequence[Mapping[str, Any]], key: str = "group") -> torch.Tensor:
    """Group id (N,) int64: from ``metadata[i][key]`` when all samples have it, else runs of
    consecutive identical prompts."""
    n = len(prompts)
    have = [key in (m or {}) for m in metadata]
    if n and all(have):
        ids: dict[Any, int] = {}
        return torch.tensor([ids.setdefault(_hashable(m[key]), len(ids)) for m in metadata], dtype=torch.long)
    if any(have):
        raise ScorerError(f"multi: metadata key {key!r} is set for some samples but not all; set it for every sample")
    out, g = [], -1
    for i, p in enumerate(prompts):
        if i == 0 or p != prompts[i - 1]:
            g += 1
        out.append(g)
    return torch.tensor(out, dtype=torch.long)


def _hashable(x: Any) -> Any:
    try:
        hash(x)
        return x
    except TypeError:
        return repr(x)


def normalize(rewards: torch.Tensor, groups: torch.Tensor, mode: str, eps: float = 1e-12) -> torch.Tensor:
    """Per-group normalisation of ``rewards`` (N,) -> (N,) float64 (see module docstring)."""
    if mode not in MODES:
        raise ScorerError(f"multi: normalize={mode!r} must be one of {', '.join(MODES)}")
    r = rewards.detach().to(torch.float64).cpu()
    if mode == "raw":
        return r
    out = torch.empty_like(r)
    for g in torch.unique(groups):
        idx = (groups == g).nonzero().flatten()
        x = r[idx]
        if mode == "zscore":
            std = x.std(unbiased=False) if len(x) > 1 else torch.tensor(0.0, dtype=torch.float64)
            out[idx] = torch.zeros_like(x) if std <= eps * max(1.0, float(x.abs().max())) else (x - x.mean()) / std
        else:
            out[idx] = _average_rank(x) / (len(x) - 1) if len(x) > 1 else torch.full_like(x, 0.5)
    return out


def _average_rank(x: torch.Tensor) -> torch.Tensor:
    """0-based ranks with ties sharing their mean rank."""
    order = torch.argsort(x, stable=True)
    sorted_x = x[order]
    ranks = torch.empty_like(x)
    i, n = 0, len(x)
    while i < n:
        j = i
        while j + 1 < n and sorted_x[j + 1] == sorted_x[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0
        i = j + 1
    return ranks


def parse_components(spec: Any) -> list[tuple[Any, float, dict[str, Any]]]:
    """Components as (scorer name or callable, weight, build kwargs).

    Accepted: ``"a:1.0,b:0.5"``; ``{"a": 1.0}``; a list of ``{"name": ..., "weight": ..., "args": {...}}``,
    of ``(name_or_scorer, weight)`` pairs, or of names / callables (weight 1)."""
    if isinstance(spec, str):
        items: list[Any] = []
        for part in filter(None, (s.strip() for s in spec.split(","))):
            name, sep, w = part.rpartition(":")
            items.append((name, float(w)) if sep and _is_number(w) else (part, 1.0))
        spec = items
    elif isinstance(spec, Mapping):
        spec = list(spec.items())
    if not isinstance(spec, (list, tuple)) or not spec:
        raise ScorerError("multi: scorers must be a non-empty list, a {name: weight} mapping or 'a:1.0,b:0.5'")
    out = []
    for item in spec:
        if isinstance(item, Mapping):
            if "name" not in item:
                raise ScorerError(f"multi: component {dict(item)} needs a 'name'")
            out.append((item["name"], float(item.get("weight", 1.0)), dict(item.get("args", {}) or {})))
        elif isinstance(item, (list, tuple)) and len(item) in (2, 3):
            out.append((item[0], float(item[1]), dict(item[2]) if len(item) == 3 else {}))
        elif isinstance(item, str) or callable(item):
            out.append((item, 1.0, {}))
        else:
            raise ScorerError(f"multi: cannot read component {item!r}")
    return out


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


class MultiScorer:
    """Weighted sum of normalised component rewards; ``components``: see :func:`parse_components`."""

    def __init__(self, components: Any, normalize: str = "zscore", group_key: str = "group",
                 name: str = "multi") -> None:
        if normalize not in MODES:
            raise ScorerError(f"multi: normalize={normalize!r} must be one of {', '.join(MODES)}")
        from scorers import build

        self.name = name
        self.mode = normalize
        self.group_key = group_key
        self.components: list[tuple[str, Callable[..., torch.Tensor], float]] = []
        for i, (ref, weight, kwargs) in enumerate(parse_components(components)):
            if isinstance(ref, str):
                label, scorer = ref, build(ref, **kwargs)
            else:
                label, scorer = getattr(ref, "name", None) or f"component{i}", ref
            unique = label if all(label != c[0] for c in self.components) else f"{label}#{i}"
            self.components.append((unique, validated(scorer, label), weight))
        self.last_components: dict[str, torch.Tensor] = {}
        self.needs_prompts = any(getattr(getattr(s, "scorer", s), "needs_prompts", False) for _, s, _ in self.components)

    def load(self) -> "MultiScorer":
        for _, scorer, _ in self.components:
            if hasattr(scorer, "load"):
                scorer.load()
        return self

    def __call__(self, outputs: Any, prompts: Sequence[str], metadata: Sequence[dict[str, Any]] | None = None
                 ) -> torch.Tensor:
        n, prompts, metadata = check_batch(outputs, prompts, metadata, self.name)
        groups = prompt_groups(prompts, metadata, self.group_key)
        total = torch.zeros(n, dtype=torch.float64)
        self.last_components = {}
        for label, scorer, weight in self.components:
            r = scorer(outputs, prompts, metadata)
            self.last_components[label] = r
            total += weight * normalize(r, groups, self.mode)
        return validate_rewards(total.to(torch.float32), n, self.name)


def multi(scorers: Any, normalize: str = "zscore", group_key: str = "group") -> MultiScorer:
    """Multi-reward scorer: ``scorers`` components (names with weights and build args, or callables),
    ``normalize`` raw / zscore / rank within each prompt group."""
    return MultiScorer(scorers, normalize=normalize, group_key=group_key)

