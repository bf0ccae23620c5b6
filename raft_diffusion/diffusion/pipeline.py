"""Load a diffusers pipeline (hub id, local folder or alias) into its model family; pick its scheduler.

A hub id loads as in diffusers: through the Hugging Face cache, downloading what is missing
(``HF_HUB_OFFLINE=1`` forbids it, and then a missing model is a clear error); local folders and the
aliases never reach the network. Every model loaded is recorded (:mod:`raft_diffusion.provenance`).
"""

from __future__ import annotations

import inspect
import json
import logging
from pathlib import Path
from typing import Any

import torch

from raft_diffusion.diffusion.families.base import ModelFamily
from raft_diffusion.errors import ConfigError, ModelError
from raft_diffusion.training import resolve_device

log = logging.getLogger(__name__)

SCHEDULER_CLASSES = {
    "ddim": ("DDIMScheduler", {}),
    "dpm++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    # diffusers refuses its default final_sigmas_type "zero" with algorithm_type dpmsolver
    "dpm": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min"}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler-a": ("EulerAncestralDiscreteScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
    "ddpm": ("DDPMScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
#: model aliases built offline: "tiny" (SD), "tiny-<family>" for the other families
TINY = "tiny"


def make_scheduler(name: str, config: Any) -> Any:
    """A diffusers scheduler ``name`` (see SCHEDULER_CLASSES) built from an existing scheduler config."""
    import diffusers

    if name not in SCHEDULER_CLASSES:
        raise ConfigError(f"unknown sampling.scheduler {name!r}; choose one of {', '.join(SCHEDULER_CLASSES)}")
    cls_name, extra = SCHEDULER_CLASSES[name]
    cls = getattr(diffusers, cls_name)
    extra = dict(extra)
    if "clip_sample" in inspect.signature(cls.__init__).parameters and dict(config).get("_class_name") != cls_name:
        # a swap keeps the sampler sane: a clip_sample left in the config by another scheduler class
        # (DDPM's default True) would clip latents to [-1, 1] and draw noise
        extra["clip_sample"] = False
    return cls.from_config(config, **extra)


def _read_index(source: str, revision: str | None, local: bool) -> dict[str, Any]:
    """``model_index.json`` of a local folder or a hub id (through the Hugging Face cache)."""
    if local:
        index = Path(source) / "model_index.json"
        if not index.is_file():
            raise ModelError(
                f"{source!r} is not a diffusers pipeline folder (no model_index.json); "
                "give a folder saved with save_pretrained, a hub id, or run `raft-diffusion tiny-model DIR`"
            )
        try:
            return json.loads(index.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ModelError(f"{str(index)!r} cannot be read as JSON ({exc}); the pipeline folder is damaged") from None
    from diffusers import DiffusionPipeline

    try:
        return dict(DiffusionPipeline.load_config(source, revision=revision))
    except (OSError, ValueError) as exc:
        raise _load_error(source, exc) from None


def _load_error(source: str, exc: BaseException) -> ModelError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ModelError(
        f"cannot load pipeline {source!r}: {first}. Without network, download it first "
        "(huggingface-cli download) or pass a local folder"
    )


def resolve_source(pretrained: str, cache_dir: str | Path | None = None) -> tuple[str, bool]:
    """(what ``from_pretrained`` loads, whether it is a local folder) for a hub id, a folder or an alias."""
    from raft_diffusion.models import resolve_model

    source = pretrained
    if pretrained == TINY or pretrained.startswith(TINY + "-"):
        from raft_diffusion.diffusion.tiny import tiny_pipeline_dir

        family = pretrained[len(TINY) + 1:] or "sd"
        source = str(tiny_pipeline_dir(family, cache_dir))
    else:
        source = str(resolve_model(pretrained))
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelError(f"model.pretrained {source!r} is a file; give a diffusers pipeline folder or a hub id")
        return str(path), True
    if source.startswith((".", "/", "~")) or source.count("/") != 1:
        raise ModelError(
            f"model.pretrained {source!r} is neither an existing folder nor a hub id like 'owner/name'; check the path"
        )
    return source, False


def load_vae(source: str, dtype: str = "float32") -> Any:
    """``model.vae``: an ``AutoencoderKL`` from a folder or hub id in ``dtype`` (a :data:`DTYPES` name),
    recorded in ``models.json``; a source that cannot be loaded is one clear :class:`ModelError`."""
    from diffusers import AutoencoderKL

    from raft_diffusion import provenance

    try:
        vae = AutoencoderKL.from_pretrained(source, dtype=DTYPES[dtype])
    except (OSError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ModelError(
            f"model.vae {source!r} cannot be loaded ({first}); give a folder holding an AutoencoderKL "
            "config.json or a hub id (without network, download it first)"
        ) from None
    provenance.record("model.vae", source)
    log.info("using the VAE of %s in %s", source, vae.dtype)
    return vae


def _own_latent_channels(source: str, revision: str | None) -> int | None:
    """``latent_channels`` of the pipeline's own VAE config (a local folder or a hub id through the
    Hugging Face cache); None where it cannot be read (then from_pretrained reports the pipeline)."""
    from diffusers import AutoencoderKL

    try:
        return AutoencoderKL.load_config(source, subfolder="vae", revision=revision).get("latent_channels")
    except (OSError, ValueError):
        return None


def load_family(
    pretrained: str,
    *,
    family: str | None = None,
    dtype: str = "float32",
    device: str = "auto",
    scheduler: str | None = None,
    revision: str | None = None,
    variant: str | None = None,
    cache_dir: str | Path | None = None,
    offload: bool = False,
    options: dict[str, Any] | None = None,
) -> ModelFamily:
    """The pipeline of ``pretrained`` (hub id, local folder, or an alias such as ``tiny``) wrapped in its
    model family, detected from ``model_index.json``'s class unless ``family`` names one.

    The safety checker is not loaded. ``offload``: only the denoiser goes to the device; the VAE
    and text encoders stay on the CPU (``pipe.device`` still reports the denoiser's device).
    ``options``: the family's model options (``model.*`` fields such as a separate VAE).
    """
    import diffusers

    from raft_diffusion.diffusion.families import family_for_pipeline_class, get_family

    if dtype not in DTYPES:
        raise ConfigError(f"model.dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    source, local = resolve_source(pretrained, cache_dir)
    info = _read_index(source, revision, local)
    cls = get_family(family) if family else family_for_pipeline_class(str(info.get("_class_name")), f"model {pretrained!r}")
    missing = [c for c in cls.required_components if c not in info]
    if missing:
        raise ModelError(f"pipeline at {source!r} lacks components {missing}; a {cls.pipeline_class} is needed")
    opts = dict(options or {}, source=source, dtype=dtype, revision=revision, variant=variant)
    kwargs: dict[str, Any] = {"dtype": DTYPES[dtype], **cls.load_kwargs(opts)}
    if opts.get("vae"):  # every family: a separate AutoencoderKL replaces the pipeline's
        kwargs["vae"] = load_vae(opts["vae"], dtype)
        channels = _own_latent_channels(source, revision)
        if channels is not None and channels != kwargs["vae"].config.latent_channels:
            raise ModelError(f"model.vae {opts['vae']!r} has {kwargs['vae'].config.latent_channels} latent channels, "
                             f"the pipeline's own VAE {channels}; name a VAE made for this model")
    if revision:
        kwargs["revision"] = revision
    if variant:
        kwargs["variant"] = variant
    if not local:
        log.info("loading hub model %s (downloaded into the Hugging Face cache if not there; HF_HUB_OFFLINE=1 forbids it)", source)
    try:
        pipe = getattr(diffusers, cls.pipeline_class).from_pretrained(source, **kwargs)
    except OSError as exc:
        raise _load_error(source, exc) from None
    except (ValueError, RuntimeError, KeyError) as exc:  # a config that does not match its weights
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0].split(". ")[0][:200]
        raise ModelError(f"model {pretrained!r} does not load: {first}; its config.json files and weights do not "
                         "match (re-save the folder with save_pretrained, or download it again)") from None
    from raft_diffusion import provenance

    provenance.record("model.pretrained", source, revision)
    if scheduler:
        pipe.scheduler = make_scheduler(scheduler, pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    fam = cls(pipe)
    fam.after_load(opts)
    dev = resolve_device(device)
    if offload and dev.type != "cpu":
        fam.denoiser.to(dev)
    else:
        pipe.to(dev)
    return fam


def load_pipeline(pretrained: str, **kwargs: Any) -> Any:
    """The diffusers pipeline of :func:`load_family` (same arguments)."""
    return load_family(pretrained, **kwargs).pipe
