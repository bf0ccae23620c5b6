"""Batched K-per-prompt generation through a model family: images, final latents, cached conditioning.

Each sample has its own seed, so an image depends only on (prompt, seed), not on the batch it
was drawn in. The pipeline returns latents (``output_type="latent"``) in the family's training
space; we decode them once for the scorer and keep them for training. Nothing here knows a family.

:class:`Offload` (``model.offload``) keeps the VAE on the CPU except while it decodes: the
latents of a whole :func:`generate` call are decoded in one visit of the VAE to the device.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from raft_diffusion.core import faults
from raft_diffusion.diffusion.families.base import Cond, ModelFamily, cond_to

log = logging.getLogger(__name__)
CPU = torch.device("cpu")


class Offload:
    """Frozen modules parked on the CPU and moved to ``device`` only inside :meth:`onto`.

    ``device=None`` disables it (every method is then a no-op). The backend passes ``None`` on a
    CPU-only run; tests pass ``torch.device("cpu")`` to exercise the offload code path there.
    """

    def __init__(self, device: torch.device | None = None) -> None:
        self.device = device

    @property
    def active(self) -> bool:
        return self.device is not None

    def park(self, *modules: Any) -> None:
        """Move ``modules`` to the CPU (when active)."""
        if self.active:
            for module in modules:
                module.to(CPU)

    @contextlib.contextmanager
    def onto(self, module: Any) -> Iterator[Any]:
        """``module`` on the execution device inside the block, back on the CPU after (even on error)."""
        if not self.active:
            yield module
            return
        module.to(self.device)
        try:
            yield module
        finally:
            module.to(CPU)


class PromptEncoder:
    """Frozen conditioning (:meth:`ModelFamily.encode_prompts`), computed once per distinct prompt
    and kept on the CPU. Encoding runs wherever the text encoders are (the CPU under ``model.offload``)."""

    def __init__(self, family: ModelFamily, negative_prompt: str | None = None) -> None:
        self.family = family
        self.negative_prompt = negative_prompt or ""
        self._cache: dict[str, Cond] = {}

    def __call__(self, texts: Sequence[str]) -> Cond:
        """The conditioning of ``texts``: name -> (len(texts), ...) in the text encoders' dtype."""
        missing = sorted({t for t in texts if t not in self._cache})
        if missing:
            encoded = self.family.encode_prompts(missing)
            for j, t in enumerate(missing):
                self._cache[t] = {k: v[j] for k, v in encoded.items()}
        rows = [self._cache[t] for t in texts]
        return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}

    def negative(self, n: int) -> Cond:
        """The conditioning of the negative (by default empty) prompt, ``n`` rows (expanded, not copied)."""
        return {k: v.expand(n, *v.shape[1:]) for k, v in self([self.negative_prompt]).items()}


@dataclass
class GenerationResult:
    """images: (N, 3, H, W) float32 [0, 1] CPU. latents: (N, ...) float32 CPU, in the family's training space."""

    images: torch.Tensor
    latents: torch.Tensor


def encode_images(family: ModelFamily, images: torch.Tensor, offload: Offload | None = None, batch_size: int = 8) -> torch.Tensor:
    """Images (N, 3, H, W) in [0, 1] -> training-space latents float32 CPU (:meth:`ModelFamily.encode`),
    the VAE on the device only meanwhile under ``offload``."""
    with (offload or Offload()).onto(family.vae):
        return family.encode(images, batch_size)


def native_draw_size(height: int, width: int, native: int, factor: int) -> tuple[int, int]:
    """(height, width) with the aspect of ``height x width`` whose longer side is the model's ``native``
    size, each a multiple of ``factor``: where ``sampling.native_fraction`` candidates are drawn."""
    scale = native / max(height, width)
    h, w = (max(factor, round(v * scale / factor) * factor) for v in (height, width))
    return h, w


def resize_images(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Images (N, 3, h, w) float32 [0, 1] -> (N, 3, height, width), antialiased bilinear (a box-like
    filter when shrinking, so a shape drawn at the native size survives as the renderer would draw it)."""
    if tuple(images.shape[-2:]) == (height, width):
        return images
    return F.interpolate(images, size=(height, width), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)


def _accepts(pipe: Any, name: str) -> bool:
    return name in inspect.signature(type(pipe).__call__).parameters


@torch.inference_mode()
def generate(
    family: ModelFamily,
    encoder: PromptEncoder,
    texts: Sequence[str],
    seeds: Sequence[int],
    *,
    steps: int,
    guidance_scale: float,
    height: int,
    width: int,
    batch_size: int,
    eta: float = 0.0,
    progress: bool = True,
    offload: Offload | None = None,
) -> GenerationResult:
    """One image per (text, seed) pair, generated ``batch_size`` at a time.

    With an active ``offload`` the VAE visits the device once, after the last batch, and decodes
    every latent (``batch_size`` at a time); otherwise each batch is decoded as it is generated.
    Images are the same either way (decoding depends only on the latent).
    """
    assert len(texts) == len(seeds), "one seed per sample"
    pipe = family.pipe
    deferred = offload is not None and offload.active
    images, latents = [], []
    guided = guidance_scale > 1.0 and family.uses_negative
    extra = {"eta": eta} if _accepts(pipe, "eta") else {}
    starts = range(0, len(texts), batch_size)
    for start in tqdm(starts, desc="generating", unit="batch", disable=not progress, leave=False):
        chunk = list(texts[start:start + batch_size])
        gens = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds[start:start + batch_size]]
        cond = cond_to(encoder(chunk), pipe.device)
        negative = cond_to(encoder.negative(len(chunk)), pipe.device) if guided else None
        out = pipe(
            **family.pipeline_inputs(cond, negative),
            height=height, width=width, num_inference_steps=steps, guidance_scale=guidance_scale,
            generator=gens, output_type="latent", return_dict=False, **extra,
        )[0]
        latents.append(out.float().cpu())
        if not deferred:
            images.append(family.decode(out).cpu())
        faults.point("generate")
    if deferred:
        assert offload is not None
        # the float32 CPU copies round-trip exactly to the pipeline's (VAE's) dtype in decode
        with offload.onto(family.vae):
            images = [family.decode(chunk).cpu() for chunk in latents]
    return GenerationResult(torch.cat(images), torch.cat(latents))
