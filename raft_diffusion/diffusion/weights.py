"""What the diffusion backend trains, checkpoints and saves: the denoiser's LoRA
(``train.adapter: lora``, :mod:`raft_diffusion.diffusion.lora`) or every denoiser weight (``full``),
behind one :class:`WeightsAdapter`.

A full fine-tune trains float32 weights and is saved as a diffusers model folder (``unet/`` or
``transformer/``, ``save_pretrained``) that ``from_pretrained`` reads back and that
:func:`load_trained_weights` swaps into a pipeline (``generate --weights RUN_DIR``).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from raft_diffusion.diffusion import lora as lora_mod
from raft_diffusion.errors import ModelError
from raft_diffusion.run_folder import DENOISER_FOLDERS


def make_trainable(model: torch.nn.Module) -> None:
    """Every parameter of the denoiser ``model`` trainable; they must be float32 already."""
    dtypes = {p.dtype for p in model.parameters()}
    if dtypes != {torch.float32}:
        raise ModelError(f"full fine-tuning needs a float32 denoiser, this one holds {sorted(map(str, dtypes))}; "
                         "set model.dtype: float32")
    model.requires_grad_(True)


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every weight of the denoiser, detached copies on the CPU (for resume)."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def load_full_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0][:200]
        raise ModelError(f"the checkpoint's denoiser does not fit this model ({first}); it belongs to another model") from None


def save_denoiser(family: Any, out_dir: str | Path) -> Path:
    """Write ``out_dir/<unet|transformer>/`` (config.json + diffusion_pytorch_model.safetensors)
    with ``save_pretrained``: built in a temporary folder beside it, then renamed into place."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    final = out / family.denoiser_attr
    tmp = Path(tempfile.mkdtemp(dir=out, prefix=f".{family.denoiser_attr}-"))
    try:
        family.denoiser.save_pretrained(str(tmp), safe_serialization=True)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def denoiser_folder(path: str | Path) -> Path | None:
    """The diffusers denoiser folder in ``path`` (a run folder holding ``unet/`` or ``transformer/``,
    or such a folder itself), or None when it holds none."""
    path = Path(path)
    for candidate in (path, *(path / name for name in DENOISER_FOLDERS)):
        if (candidate / "config.json").is_file() and any(candidate.glob("diffusion_pytorch_model*.safetensors")):
            return candidate
    return None


def load_denoiser_into_pipeline(family: Any, folder: Path) -> None:
    """Replace the pipeline's denoiser by the one saved in ``folder`` (same class, device and dtype);
    a folder of another architecture is a clear error."""
    old = family.denoiser
    cls = type(old)
    saved = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("_class_name")
    if saved and saved != cls.__name__:
        raise ModelError(f"{str(folder)!r} holds a {saved}, but this pipeline's denoiser is a {cls.__name__}; "
                         "it was trained on another model family")
    try:
        new = cls.from_pretrained(str(folder), torch_dtype=old.dtype)
    except (ValueError, RuntimeError, OSError) as exc:
        first = str(exc).strip().splitlines()[0][:200]
        raise ModelError(f"the denoiser in {str(folder)!r} does not fit this pipeline ({first}); it was trained on another model") from None
    shapes = {k: v.shape for k, v in old.state_dict().items()}
    mismatch = [k for k, v in new.state_dict().items() if shapes.get(k) != v.shape]
    if mismatch:
        raise ModelError(f"the denoiser in {str(folder)!r} does not fit this pipeline (e.g. {mismatch[0]}); "
                         "it was trained on another model")
    setattr(family.pipe, family.denoiser_attr, new.to(old.device).eval())


def load_trained_weights(family: Any, path: str | Path) -> None:
    """Load what a run trained into the family's pipeline: its fine-tuned denoiser when ``path`` holds
    one (a run folder with ``unet/`` or ``transformer/``, or that folder), else its LoRA (a run folder
    or a ``.safetensors`` file)."""
    folder = denoiser_folder(path)
    if folder is not None:
        load_denoiser_into_pipeline(family, folder)
    else:
        lora_mod.load_lora_into_pipeline(family.pipe, path)


class WeightsAdapter:
    """What the diffusion backend trains, saves and checkpoints: the LoRA (``train.adapter: lora``)
    or every denoiser weight (``full``)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    @property
    def full(self) -> bool:
        return self.kind == "full"

    def attach(self, family: Any, cfg: Any) -> torch.nn.Module | None:
        """Make the family's denoiser trainable: a LoRA from ``cfg.lora`` (seeded by ``raft.seed``;
        no targets: the family's defaults), or all of it. Returns the KL term's frozen reference
        model where one must be kept apart (full fine-tuning with ``train.kl_weight`` and
        ``kl_anchor: base``: a copy of the base denoiser), else None (a LoRA's reference is the
        denoiser with its adapters off)."""
        denoiser = family.denoiser
        if self.full:
            t = cfg.train
            reference = None
            if t.kl_weight and t.kl_anchor == "base":
                reference = copy.deepcopy(denoiser).requires_grad_(False).eval()
            make_trainable(denoiser)
            return reference
        lo = cfg.lora
        targets = lo.target_modules or list(family.default_lora_targets)
        lora_mod.add_lora(denoiser, lo.rank, lo.alpha, lo.dropout, targets, lo.init, seed=cfg.raft.seed)
        return None

    @property
    def key(self) -> str:
        """The checkpoint entry holding the trained weights."""
        return "denoiser" if self.full else "lora"

    def state_dict(self, denoiser: Any) -> dict[str, dict[str, torch.Tensor]]:
        return {self.key: full_state_dict(denoiser) if self.full else lora_mod.lora_state_dict(denoiser)}

    def load_state_dict(self, denoiser: Any, state: dict[str, Any]) -> None:
        if self.key not in state:
            held = "every denoiser weight" if "denoiser" in state else "a LoRA"
            raise ModelError(f"the checkpoint holds {held}, but train.adapter is {self.kind!r}; "
                             "resume with the train.adapter the run was started with")
        (load_full_state_dict if self.full else lora_mod.load_lora_state_dict)(denoiser, state[self.key])

    def save(self, family: Any, out_dir: Path) -> Path:
        """The trained weights into ``out_dir`` (atomically): the LoRA file or the denoiser folder."""
        return save_denoiser(family, out_dir) if self.full else lora_mod.save_lora(family, out_dir)
