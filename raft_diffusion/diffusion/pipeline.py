"""Load a Stable Diffusion pipeline (hub id or local folder), pick its scheduler, build a tiny one.

Library code never reaches the network on its own: a hub id resolves through the Hugging Face
cache, and with ``HF_HUB_OFFLINE=1`` (or no network) a missing model is a clear error.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from raft_diffusion.errors import ConfigError, ModelError
from raft_diffusion.training import resolve_device

log = logging.getLogger(__name__)

SCHEDULER_CLASSES = {
    "ddim": ("DDIMScheduler", {}),
    "dpm++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "dpm": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver"}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler-a": ("EulerAncestralDiscreteScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
    "ddpm": ("DDPMScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
TINY = "tiny"
MINIWORLD = "miniworld"  # the committed miniature SD of raft_diffusion/miniworld/assets/pipeline




def make_scheduler(name: str, config: Any) -> Any:
    """A diffusers scheduler ``name`` (see SCHEDULER_CLASSES) built from an existing scheduler config."""
    import diffusers

    if name not in SCHEDULER_CLASSES:
        raise ConfigError(f"unknown sampling.scheduler {name!r}; choose one of {', '.join(SCHEDULER_CLASSES)}")
    cls_name, extra = SCHEDULER_CLASSES[name]
    return getattr(diffusers, cls_name).from_config(config, **extra)


def _check_folder(path: Path) -> None:
    index = path / "model_index.json"
    if not index.is_file():
        raise ModelError(
            f"{str(path)!r} is not a diffusers pipeline folder (no model_index.json); "
            "give a folder saved with save_pretrained, a hub id, or run `raft-diffusion tiny-model DIR`"
        )
    try:
        info = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{str(index)!r} cannot be read as JSON ({exc}); the pipeline folder is damaged") from None
    missing = [c for c in ("unet", "vae", "text_encoder", "tokenizer", "scheduler") if c not in info]
    if missing:
        raise ModelError(f"pipeline at {str(path)!r} lacks components {missing}; a Stable Diffusion 1.x/2.x pipeline is needed")


def load_pipeline(
    pretrained: str,
    *,
    dtype: str = "float32",
    device: str = "auto",
    scheduler: str | None = None,
    revision: str | None = None,
    variant: str | None = None,
    cache_dir: str | Path | None = None,
    offload: bool = False,
) -> Any:
    """A StableDiffusionPipeline from a hub id, a local folder, or ``"tiny"`` (built offline).

    The safety checker is not loaded (RAFT decodes images itself; add your own filter if needed).
    ``offload``: only the UNet goes to the device; the VAE and text encoder stay on the CPU
    (``pipe.device`` still reports the UNet's device: diffusers prefers a non-CPU component).
    """
    from diffusers import StableDiffusionPipeline

    if dtype not in DTYPES:
        raise ConfigError(f"model.dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    source = pretrained
    if pretrained == TINY:
        source = str(tiny_pipeline_dir(cache_dir))
    elif pretrained == MINIWORLD:
        from raft_diffusion.miniworld import pipeline_path

        source = str(pipeline_path())
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelError(f"model.pretrained {source!r} is a file; give a diffusers pipeline folder or a hub id")
        _check_folder(path)
        source = str(path)
    elif source.startswith((".", "/", "~")) or source.count("/") != 1:
        raise ModelError(
            f"model.pretrained {source!r} is neither an existing folder nor a hub id like 'owner/name'; "
            "check the path"
        )
    kwargs: dict[str, Any] = {"dtype": DTYPES[dtype], "safety_checker": None, "requires_safety_checker": False}
    if revision:
        kwargs["revision"] = revision
    if variant:
        kwargs["variant"] = variant
    try:
        pipe = StableDiffusionPipeline.from_pretrained(source, **kwargs)
    except (OSError, EnvironmentError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(
            f"cannot load pipeline {source!r}: {first}. Without network, download it first "
            "(huggingface-cli download) or pass a local folder"
        ) from None
    if scheduler:
        pipe.scheduler = make_scheduler(scheduler, pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    dev = resolve_device(device)
    if offload and dev.type != "cpu":
        pipe.unet.to(dev)
        return pipe
    return pipe.to(dev)


def native_size(pipe: Any) -> int:
    """The pipeline's default image size in pixels (unet sample_size * vae scale factor)."""
    return int(pipe.unet.config.sample_size * pipe.vae_scale_factor)


# ------------------------------------------------------------------ tiny pipeline (tests, trials)
def build_tiny_pipeline(seed: int = 0, sample_size: int = 16) -> Any:
    """A tiny random StableDiffusionPipeline (diffusers' fast-test sizes, real CLIP tokenizer).

    Images are ``sample_size * 2`` pixels (the VAE downsamples by 2). About 0.5M parameters,
    most in the 49,408-token embedding table.
    """
    import tempfile

    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from raft_diffusion.miniworld.tokenizer import build_tokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=sample_size, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=8, norm_num_groups=2, attention_head_dim=2,
    )
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        block_out_channels=[4, 8], in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=2,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"], up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        sample_size=sample_size * 2,
    )
    torch.manual_seed(seed + 2)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = build_tokenizer(tmp, model_max_length=16)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        hidden_size=8, intermediate_size=16, num_attention_heads=2, num_hidden_layers=2,
        vocab_size=len(tokenizer), max_position_embeddings=16, projection_dim=8,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    ))
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
        set_alpha_to_one=False, steps_offset=1,
    )
    return StableDiffusionPipeline(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def write_tiny_pipeline(out_dir: str | Path, seed: int = 0, sample_size: int = 16) -> Path:
    """Save :func:`build_tiny_pipeline` to ``out_dir`` (safetensors) and return the folder."""
    out = Path(out_dir)
    build_tiny_pipeline(seed, sample_size).save_pretrained(out, safe_serialization=True)
    return out


def tiny_pipeline_dir(cache_dir: str | Path | None = None) -> Path:
    """A cached tiny pipeline folder (built once per cache dir): what ``pretrained: tiny`` loads."""
    from raft_diffusion.training import cached_folder

    return cached_folder("tiny-sd-v1", "model_index.json", write_tiny_pipeline, cache_dir)
