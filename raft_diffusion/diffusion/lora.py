"""Add, save and load the denoiser LoRA (peft) in the diffusers format (``pytorch_lora_weights.safetensors``).

Generic over model families: the family names the denoiser and the pipeline class whose
``save_lora_weights`` writes the file."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Sequence

import torch

from raft_diffusion.errors import ModelError

log = logging.getLogger(__name__)
WEIGHT_NAME = "pytorch_lora_weights.safetensors"


def check_target_modules(model: torch.nn.Module, targets: Sequence[str]) -> None:
    """Every target must name (the tail of) at least one Linear/Conv module of ``model``."""
    names = [n for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        tails = sorted({n.rsplit(".", 1)[-1] for n in names if "attn" in n or "proj" in n})[:12]
        raise ModelError(
            f"lora.target_modules {missing} match no layer of the {type(model).__name__}; "
            f"use names such as {', '.join(tails)}"
        )


def add_lora(
    model: Any, rank: int, alpha: float | None, dropout: float, targets: Sequence[str], init: str = "default", seed: int = 0,
) -> None:
    """Attach a trainable LoRA adapter to the denoiser ``model`` (peft); the base weights stay frozen.

    The adapter's random init is drawn from ``seed`` without touching the global RNG.
    """
    from peft import LoraConfig

    check_target_modules(model, targets)
    model.requires_grad_(False)
    config = LoraConfig(
        r=rank, lora_alpha=alpha if alpha is not None else rank, lora_dropout=dropout,
        init_lora_weights="gaussian" if init == "gaussian" else True, target_modules=list(targets),
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model.add_adapter(config)
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()


def lora_parameters(model: Any) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def lora_state_dict(model: Any) -> dict[str, torch.Tensor]:
    """The adapter's weights in peft naming (for resume)."""
    from peft.utils import get_peft_model_state_dict

    return {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(model).items()}


def load_lora_state_dict(model: Any, state: dict[str, torch.Tensor]) -> None:
    from peft.utils import set_peft_model_state_dict

    result = set_peft_model_state_dict(model, state)
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise ModelError(f"checkpoint LoRA has {len(unexpected)} keys this denoiser lacks (e.g. {unexpected[0]}); it belongs to another model")


def save_lora(family: Any, out_dir: str | Path) -> Path:
    """Write ``out_dir/pytorch_lora_weights.safetensors`` atomically with the family's pipeline class
    (``StableDiffusionPipeline.save_lora_weights`` etc.), so that class's ``load_lora_weights`` reads it.

    The keys stay in peft naming (``...to_q.lora_A.weight``). diffusers' older naming
    (``...to_q.lora.down.weight``) covers attention layers only: with conv or feed-forward targets
    the file would mix both, and ``load_lora_weights``, which picks one naming from the first key,
    would silently drop the attention half."""
    from peft.utils import get_peft_model_state_dict

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    denoiser = family.denoiser
    layers = get_peft_model_state_dict(denoiser)
    metadata = denoiser.peft_config["default"].to_dict()
    tmp = Path(tempfile.mkdtemp(dir=out, prefix=".lora-"))
    try:
        family.save_lora_weights(str(tmp), layers, metadata)
        os.replace(tmp / WEIGHT_NAME, out / WEIGHT_NAME)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out / WEIGHT_NAME


def load_lora_into_pipeline(pipe: Any, path: str | Path) -> None:
    """Load a LoRA file or folder into ``pipe``; a LoRA of another architecture is a clear error."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"LoRA {str(path)!r} does not exist; give a folder holding {WEIGHT_NAME} or the file itself")
    if path.is_dir() and not (path / WEIGHT_NAME).is_file():
        raise ModelError(f"folder {str(path)!r} holds no {WEIGHT_NAME} and no saved denoiser folder; "
                         "point at a run folder, a .safetensors LoRA or a saved denoiser folder")
    try:
        if path.is_dir():
            pipe.load_lora_weights(str(path), weight_name=WEIGHT_NAME)
        else:
            pipe.load_lora_weights(str(path.parent), weight_name=path.name)
    except (ValueError, RuntimeError, KeyError, OSError) as exc:
        first = str(exc).strip().splitlines()[0][:200]
        raise ModelError(f"LoRA {str(path)!r} does not fit this pipeline's denoiser ({first}); it was trained on another model") from None
