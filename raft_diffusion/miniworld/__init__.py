"""The miniworld: a procedural world of simple shapes with a pretrained miniature Stable Diffusion,
CLIP and aesthetic predictor, trained on the CPU by :mod:`raft_diffusion.miniworld.build`.

The committed models live in ``assets/`` (see ``assets/FIGURES.md``)::

    assets/pipeline/    StableDiffusionPipeline folder (unet, vae, text_encoder, tokenizer, scheduler)
    assets/clip/        CLIPModel + CLIPTokenizer + CLIPImageProcessor (save_pretrained)
    assets/aesthetic/   head.safetensors + config.json (scorers.aesthetic_head.AestheticMLP)

Importing this package is cheap: the world has no heavy dependency beyond torch.
"""

from __future__ import annotations

from pathlib import Path

from raft_diffusion.miniworld.world import (
    NATIVE_RESOLUTION,
    OOD_COMBOS,
    Scene,
    WorldObject,
    caption,
    heldout_scenes,
    in_domain_prompts,
    out_of_domain_prompts,
    parse_prompt,
    render,
    render_batch,
    sample_scene,
    stream,
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


__all__ = [
    "ADAPTATION_RESOLUTION", "ASSETS", "NATIVE_RESOLUTION", "OOD_COMBOS", "Scene", "WorldObject", "aesthetic_path",
    "assets_dir", "caption", "clip_path", "heldout_scenes", "in_domain_prompts", "out_of_domain_prompts",
    "parse_prompt", "pipeline_path", "render", "render_batch", "sample_scene", "stream",
]
