"""The model-family registry: one :class:`~raft_diffusion.diffusion.families.base.ModelFamily`
subclass per diffusers pipeline family, found by name (``model.family``) or by the pipeline class
that ``model_index.json`` names.

Adding a family: write ``families/NAME.py`` with a ``ModelFamily`` subclass (see ``sd.py``), and
register it below (or from a plugin: ``FAMILIES.register(name, cls, description)``).
"""

from __future__ import annotations

from raft_diffusion.diffusion.families.base import ModelFamily
from raft_diffusion.errors import ConfigError, ModelError
from raft_diffusion.registry import Registry

FAMILIES: Registry[type[ModelFamily]] = Registry("model family", ConfigError)


def register_family(cls: type[ModelFamily], description: str = "") -> type[ModelFamily]:
    """Add a family class under ``cls.name``; a second family of the same name is refused."""
    FAMILIES.register(cls.name, lambda: cls, description or (cls.__doc__ or "").strip().splitlines()[0])
    return cls


def get_family(name: str) -> type[ModelFamily]:
    """The family class registered as ``name``; an unknown name lists the known ones."""
    return FAMILIES.build(name)


def family_for_pipeline_class(class_name: str, where: str = "the model") -> type[ModelFamily]:
    """The family serving the diffusers pipeline class ``class_name`` (``model_index.json``'s ``_class_name``)."""
    for entry in FAMILIES:
        cls = entry.factory()
        if class_name == cls.pipeline_class or class_name in cls.aliases:
            return cls
    served = ", ".join(f"{e.name} ({e.factory().pipeline_class})" for e in FAMILIES)
    raise ModelError(
        f"{where} is a {class_name}, which no model family serves; set model.family to one of: {served}"
    )


def _register_builtin() -> None:
    from raft_diffusion.diffusion.families.sd import SDFamily

    register_family(SDFamily, "Stable Diffusion 1.x / 2.x (StableDiffusionPipeline): UNet LoRA, epsilon or v")
    from raft_diffusion.diffusion.families.flux import FluxFamily
    from raft_diffusion.diffusion.families.sd3 import SD3Family

    register_family(SD3Family, "Stable Diffusion 3 / 3.5 (StableDiffusion3Pipeline): transformer LoRA, flow matching")
    register_family(FluxFamily, "FLUX.1 dev / schnell (FluxPipeline): transformer LoRA, flow matching, packed latents")
    from raft_diffusion.diffusion.families.sdxl import SDXLFamily

    register_family(SDXLFamily, "Stable Diffusion XL base (StableDiffusionXLPipeline): UNet LoRA, two CLIP encoders, size ids")


_register_builtin()

__all__ = ["FAMILIES", "ModelFamily", "family_for_pipeline_class", "get_family", "register_family"]
