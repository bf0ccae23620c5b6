"""The paper's two diffusion experiments at miniworld scale, through the public API.

- ``resolution``: the miniature SD generates at a resolution it was not trained at
  (:data:`raft_diffusion.miniworld.ADAPTATION_RESOLUTION`) and fails; RAFT with the miniworld
  CLIP score plus the hand-written shape reward, generating and training at that resolution,
  recovers the colour and part of the shape.
- ``aesthetic``: RAFT with the miniworld aesthetic predictor at the native resolution.

:func:`run_experiment` evaluates the base model, runs the preset, evaluates the tuned model on
the same seeds, and returns the figures (:mod:`experiment_report` writes them). Every figure is
reported for in-domain and out-of-domain prompts; shape and colour are read by the independent
evaluator and by the miniworld CLIP.
"""

from __future__ import annotations

import contextlib
import logging
import statistics
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

log = logging.getLogger(__name__)
PRESETS = {"resolution": "miniworld-resolution", "aesthetic": "miniworld-aesthetic"}
EVAL_SEED = 4242
SAMPLERS: dict[str, tuple[str, float]] = {"DPM-Solver++": ("dpm++", 0.0), "DDIM eta 0": ("ddim", 0.0),
                                          "DDIM eta 1": ("ddim", 1.0), "Euler": ("euler", 0.0)}
"""The samplers the aesthetic experiment is read under: label -> (sampling.scheduler, sampling.eta)."""


def evaluate(backend: Any, prompts: Sequence[str], per_prompt: int, scorers_: dict[str, Any],
             height: int | None = None, width: int | None = None) -> dict[str, Any]:
    """Generate ``per_prompt`` images per prompt from fixed seeds with the backend's current model
    and sampling settings, and score them.

    Returns per scorer the mean over all images and over each prompt's first image (the
    unbiased estimate), the zero-shot shape/colour accuracy, and the mean per-prompt diversity.
    """
    from prompts.types import Prompt
    from raft_diffusion.core.rng import sample_seed
    from raft_diffusion.miniworld import evaluator
    from raft_diffusion.report import diversity

    old = backend.height, backend.width
    backend.height, backend.width = height or old[0], width or old[1]
    try:
        n = len(prompts) * per_prompt
        seeds = [sample_seed(EVAL_SEED, 0, i) for i in range(n)]
        samples = backend.generate([Prompt(p) for p in prompts], per_prompt, seeds, [f"e{i}" for i in range(n)])
    finally:
        backend.height, backend.width = old
    images, texts = samples.outputs, samples.texts
    out: dict[str, Any] = {"n_images": n, "resolution": int(images.shape[-1])}
    firsts = list(range(0, n, per_prompt))
    for name, scorer in scorers_.items():
        r = scorer(images, texts, samples.metadata).float()
        out[name] = float(r.mean())
        out[f"{name}_first"] = float(r[firsts].mean())
        out[f"{name}_std"] = float(r.std()) if n > 1 else 0.0
    out.update(fidelity(images, texts))
    gold = evaluator.gold_ratings(images)
    out["gold_rating"], out["gold_rating_first"] = float(gold.mean()), float(gold[firsts].mean())
    out["gold_rating_std"] = float(gold.std()) if n > 1 else 0.0
    div = diversity(images, samples.groups)
    out["diversity"] = statistics.fmean(div.values()) if div else 0.0
    return out


def fidelity(images: torch.Tensor, texts: Sequence[str]) -> dict[str, float]:
    """Shape / colour named as prompted, by the independent evaluator (``shape_acc``, ``colour_acc``)
    and by the miniworld CLIP (``clip_shape_acc``, ``clip_colour_acc``), fractions in [0, 1]."""
    from raft_diffusion.miniworld import evaluator
    from raft_diffusion.miniworld.fidelity import shared_scorer

    shape, colour = evaluator.accuracy(images, texts)
    clip_shape, clip_colour = shared_scorer().correctness(images, texts)
    return {"shape_acc": shape, "colour_acc": colour,
            "clip_shape_acc": float(clip_shape.mean()), "clip_colour_acc": float(clip_colour.mean())}


@contextlib.contextmanager
def sampler(backend: Any, scheduler: str, eta: float) -> Iterator[None]:
    """Sample with ``scheduler`` (a ``sampling.scheduler`` name) and DDIM ``eta`` inside the block.

    The scheduler is built as a diffusers user swaps one in, ``Class.from_config(pipe.scheduler.config)``
    (not :func:`make_scheduler`, which also turns off ``clip_sample``), so the table shows what users get."""
    import diffusers

    from raft_diffusion.diffusion.pipeline import SCHEDULER_CLASSES

    pipe, s = backend.pipe, backend.cfg.sampling
    old = pipe.scheduler, s.eta
    cls_name, extra = SCHEDULER_CLASSES[scheduler]
    pipe.scheduler, s.eta = getattr(diffusers, cls_name).from_config(old[0].config, **extra), eta
    try:
        yield
    finally:
        pipe.scheduler, s.eta = old


def under_samplers(backend: Any, prompts: Sequence[str], per_prompt: int, judges: dict[str, Any]) -> dict[str, Any]:
    """:func:`evaluate` under each of :data:`SAMPLERS` (same prompts and seeds)."""
    out = {}
    for label, (scheduler, eta) in SAMPLERS.items():
        with sampler(backend, scheduler, eta):
            out[label] = evaluate(backend, prompts, per_prompt, judges)
    return out


def run_experiment(name: str, out_dir: str | Path, *, overrides: dict[str, Any] | None = None,
                   per_prompt: int = 8, progress: bool = False) -> dict[str, Any]:
    """Run experiment ``name`` ("resolution" or "aesthetic"); returns {"before", "after", "native", "history", ...}."""
    import scorers
    from raft_diffusion.api import build_loop
    from raft_diffusion.config import load_config
    from raft_diffusion.miniworld import NATIVE_RESOLUTION, world
    from raft_diffusion.miniworld.evaluate import vae_round_trip
    from raft_diffusion.errors import ConfigError

    if name not in PRESETS:
        raise ConfigError(f"unknown miniworld experiment {name!r}; choose one of {', '.join(PRESETS)}")
    cfg = load_config(PRESETS[name], {"output.dir": str(Path(out_dir)), "output.overwrite": True, **(overrides or {})})
    t0 = time.perf_counter()
    loop = build_loop(cfg, progress=progress)
    reward_name = cfg.reward.scorer
    judges = {reward_name: loop.scorer}
    if reward_name != "miniworld-clip":
        judges["miniworld-clip"] = scorers.build("miniworld-clip")
    splits = {"in_domain": world.in_domain_prompts(), "out_of_domain": world.out_of_domain_prompts()}
    result: dict[str, Any] = {"experiment": name, "preset": PRESETS[name], "reward": reward_name,
                              "resolution": loop.backend.height, "native_resolution": NATIVE_RESOLUTION,
                              "rounds": cfg.raft.rounds, "k": cfg.raft.k, "seed": cfg.raft.seed, "prompts_per_round": cfg.raft.prompts_per_round,
                              "per_prompt": per_prompt}
    result["before"] = {s: evaluate(loop.backend, p, per_prompt, judges) for s, p in splits.items()}
    if loop.backend.height != NATIVE_RESOLUTION:
        result["native"] = {s: evaluate(loop.backend, p, per_prompt, judges, NATIVE_RESOLUTION, NATIVE_RESOLUTION)
                            for s, p in splits.items()}
        result["vae_round_trip"] = vae_round_trip(loop.backend.pipe.vae, loop.backend.height)
    if name == "aesthetic":
        result["samplers_before"] = under_samplers(loop.backend, splits["in_domain"], per_prompt, judges)
    history = loop.run()
    result["after"] = {s: evaluate(loop.backend, p, per_prompt, judges) for s, p in splits.items()}
    if name == "aesthetic":
        result["samplers_after"] = under_samplers(loop.backend, splits["in_domain"], per_prompt, judges)
    last = history.rounds[-1]["round"] if history.rounds else 0
    if history.rounds and history.rounds[-1].get("best_round") not in (None, last):  # what the guard saved us from
        from raft_diffusion.core.checkpoint import checkpoint_dir, load_checkpoint

        loop.backend.load_state_dict(load_checkpoint(checkpoint_dir(loop.run_dir / "checkpoints", last))[0])
        result["last_round"] = {s: evaluate(loop.backend, p, per_prompt, judges) for s, p in splits.items()}
    result["history"] = history.rounds
    result["evals"] = [{k: v for k, v in e.items() if not k.endswith("_per_prompt")} for e in history.evals]
    result["guard"] = cfg.raft.early_stop
    result["wall_s"] = time.perf_counter() - t0
    result["run_dir"] = str(loop.run_dir)
    return result
