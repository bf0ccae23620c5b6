"""The CLIP backbone interface (:class:`ClipBackbone`) and the base of the scorers that run on one
(:class:`BackboneScorer`).

A backbone takes images as float tensors (N, 3, H, W) in [0, 1] on any device, preprocesses them
with its :class:`~scorers.clip_preprocess.ImagePreprocess` and returns *un-normalised* embeddings
(N, D) float32; scorers L2-normalise. Models load lazily, once (:meth:`ClipBackbone.load`).
"""

from __future__ import annotations

from typing import Sequence

import torch

from scorers.clip_preprocess import ImagePreprocess
from scorers.common import BaseScorer, resolve_device, resolve_dtype


class ClipBackbone:
    """Interface: ``encode_images(images) -> (N, D)``, ``encode_texts(texts) -> (N, D)`` (float32,
    un-normalised), ``preprocess`` (:class:`ImagePreprocess`), ``logit_scale`` (float), ``device``."""

    device: torch.device
    dtype: torch.dtype
    preprocess: ImagePreprocess

    def __init__(self, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None) -> None:
        self.device = resolve_device(device)
        #: the device it was built for; :meth:`to` (scorer offload) changes ``device`` only
        self.home_device = self.device
        self.dtype = resolve_dtype(dtype)
        self._loaded = False

    def load(self) -> "ClipBackbone":
        if not self._loaded:
            self._load()
            self._loaded = True
        return self

    def to(self, device: str | torch.device) -> "ClipBackbone":
        """Move the model to ``device`` (an unloaded backbone loads there later); returns self."""
        self.device = torch.device(device)
        model = getattr(self, "model", None)
        if model is not None:
            model.to(self.device)
        return self

    def _load(self) -> None:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def embed_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Image embeddings of already preprocessed pixels."""
        raise NotImplementedError

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) float in [0, 1] -> (N, D) float32, not normalised."""
        self.load()
        pixels = self.preprocess(images, self.device, self.dtype)
        return self.embed_pixels(pixels).float()

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """list of N strings -> (N, D) float32, not normalised."""
        raise NotImplementedError

    @property
    def logit_scale(self) -> float:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.describe()}, device={self.device}, dtype={self.dtype})"


class BackboneScorer(BaseScorer):
    """A scorer that runs on a :class:`ClipBackbone` (``self.backbone``): it lives where the
    backbone lives, and ``model.offload`` may park it on the CPU between calls (subclasses move
    their own extra tensors in ``to``)."""

    supports_offload = True
    backbone: ClipBackbone

    @property
    def device(self) -> torch.device:
        return self.backbone.device

    @property
    def home_device(self) -> torch.device:
        """The device the backbone was built for (``device`` is where it is now)."""
        return self.backbone.home_device
