"""JPEG compressibility rewards (DDPO): the size of the image saved as JPEG at quality 95."""

from __future__ import annotations

import io
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from scorers.base import check_images


def jpeg_size_kb(images: torch.Tensor, quality: int = 95) -> torch.Tensor:
    """JPEG size in kilobytes of each image. images: (N, 3, H, W) float in [0, 1] -> (N,) float32."""
    arr = (images.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
    sizes = []
    for a in arr:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="JPEG", quality=quality)
        sizes.append(buf.tell() / 1000.0)
    return torch.tensor(sizes, dtype=torch.float32)


class JpegScorer:
    """Reward = -size (compressibility) or +size (incompressibility), in kB at ``quality``."""

    def __init__(self, sign: float, quality: int = 95, name: str = "jpeg") -> None:
        self.sign = sign
        self.quality = quality
        self.name = name

    def __call__(self, outputs: torch.Tensor, prompts: Sequence[str], metadata: Sequence[dict[str, Any]]) -> torch.Tensor:
        images = check_images(outputs, self.name)
        return self.sign * jpeg_size_kb(images, self.quality)


def jpeg_compressibility(quality: int = 95) -> JpegScorer:
    """Smaller JPEG files score higher (negated size in kB)."""
    return JpegScorer(-1.0, quality, "jpeg-compressibility")


def jpeg_incompressibility(quality: int = 95) -> JpegScorer:
    """Larger JPEG files score higher (size in kB)."""
    return JpegScorer(1.0, quality, "jpeg-incompressibility")
