"""Batched K-per-prompt generation: images, final latents and cached prompt embeddings.

Each sample has its own seed, so an image depends only on (prompt, seed), not on the batch it
was drawn in. The pipeline returns latents (``output_type="latent"``), which are already in the
scaled latent space SD trains in; we decode them once for the scorer and keep them for training.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from raft_diffusion.core import faults

log = logging.getLogger(__name__)


class PromptEncoder:
    """Frozen text-encoder outputs, computed once per distinct prompt and kept on the CPU."""

    def __init__(self, pipe: Any, negative_prompt: str | None = None) -> None:
        self.pipe = pipe
        self.negative_prompt = negative_prompt or ""
        self._cache: dict[str, torch.Tensor] = {}

    @torch.inference_mode()
    def _encode(self, texts: list[str]) -> torch.Tensor:
        embeds, _ = self.pipe.encode_prompt(texts, self.pipe.device, 1, False)
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
) -> GenerationResult:
    """One image per (text, seed) pair, generated ``batch_size`` at a time."""
    assert len(texts) == len(seeds), "one seed per sample"
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
        images.append(decode_latents(pipe, out).cpu())
        faults.point("generate")
    return GenerationResult(torch.cat(images), torch.cat(latents))
