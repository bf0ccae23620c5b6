"""Batched K-per-prompt generation: images, final latents and cached prompt embeddings.

Each sample has its own seed, so an image depends only on (prompt, seed), not on the batch it
was drawn in. The pipeline returns latents (``output_type="latent"``), which are already in the
scaled latent space SD trains in; we decode them once for the scorer and keep them for training.

:class:`Offload` (``model.offload``) keeps the VAE on the CPU except while it decodes: the
latents of a whole :func:`generate` call are decoded in one visit of the VAE to the device.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch
from tqdm.auto import tqdm

from raft_diffusion.core import faults

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
    """Frozen text-encoder outputs, computed once per distinct prompt and kept on the CPU.

    Encoding runs wherever the text encoder is: on the CPU when ``model.offload`` parked it there.
    """

    def __init__(self, pipe: Any, negative_prompt: str | None = None) -> None:
        self.pipe = pipe
        self.negative_prompt = negative_prompt or ""
        self._cache: dict[str, torch.Tensor] = {}

    @torch.inference_mode()
    def _encode(self, texts: list[str]) -> torch.Tensor:
        # the text encoder's own device, not pipe.device (which reports the UNet's accelerator)
        embeds, _ = self.pipe.encode_prompt(texts, self.pipe.text_encoder.device, 1, False)
        return embeds.detach().to("cpu")

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        """(len(texts), L, D) embeddings in the text encoder's dtype."""
        missing = sorted({t for t in texts if t not in self._cache})
        if missing:
            for t, e in zip(missing, self._encode(missing)):
                self._cache[t] = e
        return torch.stack([self._cache[t] for t in texts])

    def negative(self, n: int) -> torch.Tensor:
        """(n, L, D) embeddings of the negative (by default empty) prompt."""
        return self([self.negative_prompt])[0].expand(n, -1, -1)


@dataclass
class GenerationResult:
    """images: (N, 3, H, W) float32 [0, 1] CPU. latents: (N, C, h, w) float32 CPU (scaled)."""

    images: torch.Tensor
    latents: torch.Tensor


@torch.inference_mode()
def decode_latents(pipe: Any, latents: torch.Tensor) -> torch.Tensor:
    """Scaled latents (N, C, h, w) -> images (N, 3, H, W) float32 in [0, 1]."""
    vae = pipe.vae
    x = latents.to(device=vae.device, dtype=vae.dtype) / vae.config.scaling_factor
    images = vae.decode(x, return_dict=False)[0]
    return (images.float() / 2 + 0.5).clamp(0, 1)


@torch.inference_mode()
def encode_images(vae: Any, images: torch.Tensor, offload: Offload | None = None, batch_size: int = 8) -> torch.Tensor:
    """Images (N, 3, H, W) in [0, 1] -> scaled latents (N, C, h, w) float32 CPU: the VAE posterior's
    mean times ``scaling_factor`` (what ``decode_latents`` inverts)."""
    out = []
    with (offload or Offload()).onto(vae):
        for start in range(0, len(images), batch_size):
            x = images[start:start + batch_size].to(device=vae.device, dtype=vae.dtype) * 2 - 1
            out.append(vae.encode(x).latent_dist.mean.float().cpu() * vae.config.scaling_factor)
    return torch.cat(out)


@torch.inference_mode()
def generate(
    pipe: Any,
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
    deferred = offload is not None and offload.active
    images, latents = [], []
    cfg = guidance_scale > 1.0
    starts = range(0, len(texts), batch_size)
    for start in tqdm(starts, desc="generating", unit="batch", disable=not progress, leave=False):
        chunk = list(texts[start:start + batch_size])
        gens = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds[start:start + batch_size]]
        embeds = encoder(chunk).to(pipe.device)
        out = pipe(
            prompt_embeds=embeds,
            negative_prompt_embeds=encoder.negative(len(chunk)).to(pipe.device) if cfg else None,
            height=height, width=width, num_inference_steps=steps, guidance_scale=guidance_scale,
            eta=eta, generator=gens, output_type="latent", return_dict=False,
        )[0]
        latents.append(out.float().cpu())
        if not deferred:
            images.append(decode_latents(pipe, out).cpu())
        faults.point("generate")
    if deferred:
        assert offload is not None
        # the float32 CPU copies round-trip exactly to the pipeline's (VAE's) dtype in decode_latents
        with offload.onto(pipe.vae):
            images = [decode_latents(pipe, chunk).cpu() for chunk in latents]
    return GenerationResult(torch.cat(images), torch.cat(latents))
