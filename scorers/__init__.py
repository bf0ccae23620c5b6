"""Rewards behind one registry: ``scorers.build(name, **kwargs)`` -> a scorer callable.

Every scorer is ``scorer(outputs, prompts, metadata) -> Tensor (N,) float32``; see
:mod:`scorers.base`. Factories import heavy dependencies and load weights lazily. Plugins
(:mod:`raft_diffusion.plugins`) add scorers: they load on the first unknown name or listing.
"""

from __future__ import annotations

from typing import Any, Callable

from raft_diffusion.errors import ScorerError
from raft_diffusion.registry import Registry
from scorers.base import Scorer, validate_rewards

REGISTRY: Registry[Scorer] = Registry("scorer", ScorerError)


def register(name: str, factory: Callable[..., Scorer], description: str = "") -> Callable[..., Scorer]:
    """Register a scorer factory under ``name`` (duplicates are refused)."""
    return REGISTRY.register(name, factory, description)


def _load_plugins() -> None:
    from raft_diffusion.plugins import load_plugins

    load_plugins()


def build(name: str, **kwargs: Any) -> Scorer:
    """Build the scorer ``name``; a "module:function" string loads a custom scorer."""
    if name not in REGISTRY:
        _load_plugins()
    if ":" in name and name not in REGISTRY:
        from scorers.custom import from_reference

        return from_reference(name, **kwargs)
    factory = REGISTRY.entry(name).factory
    _check_kwargs(name, factory, kwargs)
    return factory(**kwargs)


def _check_kwargs(name: str, factory: Any, kwargs: dict[str, Any]) -> None:
    """Refuse keyword arguments the factory does not take, naming the ones it does."""
    import inspect

    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    unknown = [k for k in kwargs if k not in params]
    if unknown:
        known = [p for p in params if params[p].kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)]
        raise ScorerError(f"scorer {name!r} takes no argument {unknown[0]!r} (reward.kwargs); it takes: "
                          f"{', '.join(known) or 'none'}")


def available() -> list[str]:
    """Registered scorer names (plugins' included), sorted."""
    _load_plugins()
    return REGISTRY.names()


def describe() -> list[tuple[str, str]]:
    """(name, one-line description) for every registered scorer (plugins' included)."""
    _load_plugins()
    return [(e.name, e.description) for e in REGISTRY]


def _register_builtin() -> None:
    from scorers import jpeg, simple

    register("jpeg-compressibility", jpeg.jpeg_compressibility,
             "negated JPEG size in kB at quality 95 (smaller files score higher); no weights")
    register("jpeg-incompressibility", jpeg.jpeg_incompressibility,
             "JPEG size in kB at quality 95 (larger files score higher); no weights")
    register("brightness", simple.Brightness, "mean pixel value in [0, 1] (or closeness to `target`); no weights")

    from functools import partial

    from scorers import aesthetic, clip_score, hpsv2, imagereward, multi, pickscore, text

    register("aesthetic-v2", aesthetic.aesthetic_v2,
             "LAION aesthetic v2 MLP on CLIP ViT-L/14 (open_clip openai), AVA 1-10, comparable across prompts")
    register("aesthetic", aesthetic.aesthetic_v2, "alias of aesthetic-v2")
    register("aesthetic-v1", aesthetic.aesthetic_v1,
             "LAION aesthetic v1 linear head on CLIP ViT-L/14, AVA 1-10; weights=sa_0_4_vit_l_14_linear.pth")
    register("clip-score", clip_score.clip_score,
             "CLIP score max(100*cos(image, prompt), 0) on open_clip (default ViT-L-14/openai), 0-100")
    register("clip-score-hf", clip_score.clip_score_transformers,
             "CLIP score max(100*cos, 0) on a transformers CLIPModel (path=hub id or folder), 0-100")
    register("pickscore", pickscore.pickscore,
             "PickScore: logit_scale*cos on CLIP-H (yuvalkirstain/PickScore_v1), ~18-24; within-prompt only")
    register("hpsv2", partial(hpsv2.hpsv2, version="v2"),
             "HPSv2: cos on open_clip ViT-H-14 + HPS_v2_compressed.pt (xswu/HPSv2), ~0.2-0.35; within-prompt only")
    register("hpsv2.1", partial(hpsv2.hpsv2, version="v2.1"),
             "HPSv2.1: cos on ViT-H-14 + HPS_v2.1_compressed.pt (xswu/HPSv2), ~0.2-0.35; within-prompt only")
    register("imagereward", imagereward.imagereward,
             "ImageReward (BLIP; needs pip install image-reward), ~standard normal; rank within a prompt")
    register("text-reward-model", text.text_reward_model,
             "text: logit of a sequence-classification reward model (model=hub id or folder; chat template)")
    register("text-pipeline", text.text_pipeline,
             "text: score (0-1) of one label from a transformers pipeline, e.g. sentiment-analysis")
    register("text-function", text.text_function,
             "text: a Python function fn(response, prompt, metadata) -> float, fn='module:function'")
    register("text-length", text.text_length,
             "text: -|length - target| in words or chars (or the length itself); no weights")
    register("text-contains", text.text_contains,
             "text: number of occurrences of keyword in the response; no weights")
    register("multi", multi.multi,
             "weighted sum of scorers, each normalised per prompt (raw / zscore / rank); scorers='a:1,b:0.5'")


_register_builtin()

__all__ = ["REGISTRY", "Scorer", "available", "build", "describe", "register", "validate_rewards"]
