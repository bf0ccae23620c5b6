"""The miniworld: a procedural world of simple shapes with a pretrained miniature Stable Diffusion,
CLIP and aesthetic predictor, trained on the CPU by :mod:`raft_diffusion.miniworld.build`.

The committed models live in ``assets/`` (see ``assets/FIGURES.md``)::

    assets/pipeline/    StableDiffusionPipeline folder (unet, vae, text_encoder, tokenizer, scheduler)
    assets/clip/        CLIPModel + CLIPTokenizer + CLIPImageProcessor (save_pretrained)
    assets/aesthetic/   head.safetensors + config.json (scorers.aesthetic_head.AestheticMLP)
    assets/evaluator/   model.safetensors + config.json (the independent evaluator CNN, evaluator.py)

Importing this package is cheap: the world (and torch) load on first use of one of its names.
The miniworld plugs into raft-diffusion as a plugin would (:mod:`raft_diffusion.miniworld.plugin`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: Names re-exported from :mod:`raft_diffusion.miniworld.world`, imported (with torch) on first use,
#: so the plugin that registers the miniworld costs no torch import.
_WORLD = (
    "NATIVE_RESOLUTION", "OOD_COMBOS", "Scene", "WorldObject", "caption", "heldout_scenes", "in_domain_prompts",
    "out_of_domain_prompts", "parse_prompt", "render", "render_batch", "sample_scene", "stream",
)

ASSETS = Path(__file__).resolve().parent / "assets"
ADAPTATION_RESOLUTION = 16
"""Resolution the base pipeline was not trained at (the resolution-adaptation experiment)."""


def assets_dir() -> Path:
    """The committed assets folder."""
    return ASSETS


def pipeline_path() -> Path:
    """``StableDiffusionPipeline.from_pretrained(pipeline_path())`` loads the miniature SD offline."""
    return ASSETS / "pipeline"


def clip_path() -> Path:
    """``CLIPModel`` / ``CLIPTokenizer`` / ``CLIPImageProcessor`` ``.from_pretrained(clip_path())``."""
    return ASSETS / "clip"


def aesthetic_path() -> Path:
    """Folder of the aesthetic head: ``head.safetensors`` + ``config.json``."""
    return ASSETS / "aesthetic"


def __getattr__(name: str) -> Any:
    if name in _WORLD:
        from raft_diffusion.miniworld import world

        return getattr(world, name)
    raise AttributeError(f"module 'raft_diffusion.miniworld' has no attribute {name!r}")


__all__ = [
    "ADAPTATION_RESOLUTION", "ASSETS", "NATIVE_RESOLUTION", "OOD_COMBOS", "Scene", "WorldObject", "aesthetic_path",
    "assets_dir", "caption", "clip_path", "heldout_scenes", "in_domain_prompts", "out_of_domain_prompts",
    "parse_prompt", "pipeline_path", "render", "render_batch", "sample_scene", "stream",
]
