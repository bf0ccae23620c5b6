"""Build every miniworld model in order (CLIP, VAE, UNet -> pipeline, aesthetic head), evaluate them
and write ``figures.json`` + ``FIGURES.md`` beside the assets. Seeded; logs wall time per model.

``quick=True`` uses tiny models and a handful of steps (seconds; what the tests run). The default
settings are the ones that produced the committed assets (see ``assets/FIGURES.md``).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass
class UnetStage:
    """One UNet training stage; each stage after the first continues from the one before."""

    steps: int
    seconds: float | None = None
    lr: float = 1e-3
    seed: int = 0
    n_data: int = 40000
    addition_embed: bool = True
    ema_decay: float = 0.999


REUSABLE = ("clip", "aesthetic")
"""The models a build can copy from another miniworld instead of training (``BuildSettings.reuse``)."""


@dataclass
class BuildSettings:
    """Steps and wall-time budgets of each model (``*_seconds`` None = run all steps).

    The defaults are the staged recipe that made the committed assets (``assets/FIGURES.md``): the
    CLIP, then its image tower fine-tuned once per ``clip_vision_pair_weights`` entry against the
    frozen text tower, the VAE and its decoder at every served size, three UNet stages (the first
    without the pooled-text addition embedding, which the tiny model needed cross-attention to learn
    first), the aesthetic head. Stage seeds are offsets of the build's ``seed``.
    """

    clip_steps: int = 1600
    clip_seconds: float | None = None
    clip_vision_steps: int = 5000
    clip_vision_seconds: tuple[float | None, ...] = (1000.0, 960.0, 660.0)
    clip_vision_pair_weights: tuple[float, ...] = (1.0, 3.0, 3.0)
    vae_steps: int = 2500
    vae_seconds: float | None = None
    vae_decoder_steps: int = 3000
    vae_blocks: int = 3
    vae_latent_channels: int = 4
    vae_sizes: tuple[int, ...] = (32,)
    """Sizes the VAE trains at before its decoder stage (the committed: 32 px alone)."""
    unet_stages: tuple[UnetStage, ...] = (
        UnetStage(steps=4000, lr=1e-3, addition_embed=False),
        UnetStage(steps=3100, lr=7e-4, seed=1, n_data=20000),
        UnetStage(steps=4000, lr=3e-4, seed=1, n_data=20000),
    )
    aesthetic_train: int = 12000
    aesthetic_steps: int = 3000
    reuse: tuple[str, ...] = ()
    """Models copied from ``reuse_from`` instead of trained (:data:`REUSABLE`): the pixel-space models
    do not depend on the VAE, so a new latent space needs only the VAE and the UNet trained again."""
    reuse_from: str | None = None
    """A miniworld assets folder (default: the committed one)."""

    @classmethod
    def quick(cls) -> "BuildSettings":
        return cls(clip_steps=3, clip_vision_steps=2, clip_vision_seconds=(None,), clip_vision_pair_weights=(3.0,),
                   vae_steps=3, vae_decoder_steps=2,
                   unet_stages=(UnetStage(steps=2, n_data=64, addition_embed=False), UnetStage(steps=2, n_data=64, seed=1)),
                   aesthetic_train=64, aesthetic_steps=5)


def build(out: str | Path, *, seed: int = 0, quick: bool = False, settings: BuildSettings | None = None,
          evaluate: bool = True) -> dict:
    """Train all models into ``out`` and return the figures (also written to ``out/figures.json``)."""
    import torch

    from raft_diffusion.errors import ConfigError
    from raft_diffusion.miniworld import assets_dir
    from raft_diffusion.miniworld import evaluate as ev
    from raft_diffusion.miniworld.train_aesthetic import train_aesthetic
    from raft_diffusion.miniworld.train_clip import finetune_vision, train_clip
    from raft_diffusion.miniworld.train_unet import train_unet
    from raft_diffusion.miniworld.train_vae import finetune_decoder, train_vae

    if seed < 0:
        raise ConfigError(f"--seed must be >= 0, got {seed}")
    s = settings or (BuildSettings.quick() if quick else BuildSettings())
    if len(s.clip_vision_seconds) != len(s.clip_vision_pair_weights):
        raise ConfigError(f"clip_vision_seconds has {len(s.clip_vision_seconds)} entries for "
                          f"{len(s.clip_vision_pair_weights)} clip_vision_pair_weights; give one per stage")
    unknown = sorted(set(s.reuse) - set(REUSABLE))
    if unknown:
        raise ConfigError(f"cannot reuse {', '.join(unknown)}; reusable models: {', '.join(REUSABLE)}")
    source = Path(s.reuse_from) if s.reuse_from else assets_dir()
    missing = [name for name in s.reuse if not (source / name / "config.json").is_file()]
    if missing:
        raise ConfigError(f"{source} has no {', '.join(missing)} to reuse; name a miniworld assets folder")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    runs = {}
    if "clip" in s.reuse:
        runs["clip"] = reuse_model(source, out, "clip")
    else:
        runs["clip"] = train_clip(out, seed=seed, steps=s.clip_steps, quick=quick, max_seconds=s.clip_seconds)
        for i, (weight, seconds) in enumerate(zip(s.clip_vision_pair_weights, s.clip_vision_seconds), start=2):
            runs[f"clip_vision_stage{i}"] = finetune_vision(out, seed=seed + i, steps=s.clip_vision_steps,
                                                            max_seconds=seconds, pair_weight=weight)
    runs["vae"] = train_vae(out, seed=seed, steps=s.vae_steps, quick=quick, max_seconds=s.vae_seconds,
                            blocks=s.vae_blocks, latent_channels=s.vae_latent_channels, sizes=s.vae_sizes)
    runs["vae_decoder"] = finetune_decoder(out / "vae", out, seed=seed, steps=s.vae_decoder_steps)
    for i, st in enumerate(s.unet_stages, start=1):
        runs[f"unet_stage{i}"] = train_unet(
            out, seed=seed + st.seed, steps=st.steps, lr=st.lr, quick=quick, max_seconds=st.seconds, n_data=st.n_data,
            checkpoint_every=0 if quick else 1000, ema_decay=st.ema_decay, addition_embed=st.addition_embed,
            init_from=out / "pipeline" if i > 1 else None)
    if "aesthetic" in s.reuse:
        runs["aesthetic"] = reuse_model(source, out, "aesthetic")
    else:
        runs["aesthetic"] = train_aesthetic(out, seed=seed, n_train=s.aesthetic_train, steps=s.aesthetic_steps,
                                            quick=quick)
    for scratch in ("vae", "_tokenizer_src"):  # the VAE lives on inside pipeline/
        shutil.rmtree(out / scratch, ignore_errors=True)
    train_wall = time.time() - t0
    for name, r in runs.items():
        r.pop("path", None)
        log.info("miniworld build: %s took %.1f s", name, r["wall_s"])
    log.info("miniworld build: training took %.1f s in all", train_wall)
    figures: dict = {"seed": seed, "quick": quick, "settings": asdict(s), "train": runs,
                     "train_wall_s": round(train_wall, 1), "torch_threads": torch.get_num_threads()}
    if evaluate:
        figures["figures"] = ev.evaluate_all(out, quick=quick)
    figures["total_wall_s"] = round(time.time() - t0, 1)
    write_figures(out, figures)
    log.info("miniworld build: done in %.1f s; figures in %s", figures["total_wall_s"], out / "figures.json")
    return figures


def reuse_model(source: Path, out: Path, name: str) -> dict:
    """Copy ``source/name`` to ``out/name`` (nothing to do when they are the same folder); the
    training record of a reused model."""
    if (source / name).resolve() != (out / name).resolve():
        shutil.rmtree(out / name, ignore_errors=True)
        shutil.copytree(source / name, out / name)
    log.info("miniworld build: %s reused from %s", name, source)
    return {"reused_from": str(source), "steps": 0, "wall_s": 0.0}


def write_figures(out: str | Path, figures: dict) -> None:
    out = Path(out)
    (out / "figures.json").write_text(json.dumps(figures, indent=2) + "\n")
