"""The ``miniworld-shape`` reward: a hand-written, shape-aware reading of an image (nothing learned).

The miniworld CLIP can be fooled at 16 px: RAFT on it alone learns blobs the CLIP calls crosses.
This reward looks at the geometry instead, the way a detector or a segmenter would for a real model:

1. the background is the median colour of the border pixels;
2. the foreground is a soft mask, each pixel's colour distance from the background over
   :data:`FOREGROUND_DISTANCE`, clipped to [0, 1];
3. for every shape of the world, its template (:func:`world.render`'s geometry) is drawn at the
   mask's centroid with the mask's area times each of :data:`SCALES` (a blurred mask's area
   overstates the object's), blurred as a decoded 16 px image is (:data:`BLUR_SIGMA`), and
   compared with the mask by correlation; a shape's fit is its best over the scales;
4. the margin is half the prompted shape's fit minus the best other shape's, above 0 when the
   prompted shape fits best;
5. an image with too little foreground to hold an object (under :data:`MIN_AREA` of the image, the
   smallest object the world draws) is scored toward -1, so drawing nothing never beats drawing:
   reward = presence * margin - (1 - presence), presence = min(1, area / MIN_AREA), the area
   counting the pixels at least half foreground (a faint haze is not an object); in [-1, 1].

It shares no weights, data or code path with the independent evaluator
(:mod:`raft_diffusion.miniworld.evaluator`), which stays the judge.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from raft_diffusion.miniworld import world

FOREGROUND_DISTANCE = 0.25
"""Colour distance (RGB, Euclidean) from the background at which a pixel counts fully as foreground."""
SUPERSAMPLE = 4
SCALES = (0.7, 0.85, 1.0)
"""Template sizes, as fractions of the side that matches the mask's area."""
BLUR_SIGMA = 0.8
"""Gaussian blur (pixels) applied to the templates: about the VAE's at 16 px. With it and
:data:`SCALES` the best fit names the shape of 16 px renders passed through the miniworld VAE 68% of
the time (48% for sharp templates at one scale and soft IoU); clean 16 px renders 98%."""
MIN_AREA = 0.03
"""Foreground area, as a fraction of the image, of the smallest object the world draws (3.5% at 16 px)."""


@functools.cache
def _unit_template(shape: str, n: int = 256) -> tuple[float, float, float]:
    """(area, centroid u, centroid v) of ``shape`` at radius 1, in radius units."""
    c = (torch.arange(n, dtype=torch.float64) + 0.5) / n * 2.4 - 1.2
    v, u = torch.meshgrid(c, c, indexing="ij")
    m = world._shape_mask(shape, u, v).double()
    cell = (2.4 / n) ** 2
    area = float(m.sum()) * cell
    return area, float((m * u).sum() * cell / area), float((m * v).sum() * cell / area)


def foreground(images: torch.Tensor) -> torch.Tensor:
    """Soft foreground masks (N, H, W) in [0, 1] of images (N, 3, H, W) in [0, 1]."""
    x = images.float()
    border = torch.cat([x[..., 0, :], x[..., -1, :], x[..., :, 0], x[..., :, -1]], dim=-1)  # (N, 3, 4W)
    background = border.median(dim=-1).values[..., None, None]
    return ((x - background).norm(dim=1) / FOREGROUND_DISTANCE).clamp(0, 1)


def templates(mask: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Each shape's template (N, S, H, W) in [0, 1], drawn at the mask's centroid with ``scale``
    times the side that gives the mask's area."""
    h, w = mask.shape[1:]
    area = mask.sum((1, 2)).clamp_min(1.0)  # pixels
    ys = (torch.arange(h, dtype=torch.float32) + 0.5)
    xs = (torch.arange(w, dtype=torch.float32) + 0.5)
    cy = (mask * ys[:, None]).sum((1, 2)) / area
    cx = (mask * xs[None, :]).sum((1, 2)) / area
    fine_y = (torch.arange(h * SUPERSAMPLE, dtype=torch.float32) + 0.5) / SUPERSAMPLE
    fine_x = (torch.arange(w * SUPERSAMPLE, dtype=torch.float32) + 0.5) / SUPERSAMPLE
    out = []
    for shape in world.SHAPES:
        unit_area, du, dv = _unit_template(shape)
        r = scale * (area / unit_area).sqrt()[:, None, None]
        u = (fine_x[None, None, :] - cx[:, None, None]) / r + du
        v = (fine_y[None, :, None] - cy[:, None, None]) / r + dv
        m = world._shape_mask(shape, u, v).float()
        out.append(F.avg_pool2d(m[:, None], SUPERSAMPLE)[:, 0])
    return torch.stack(out, dim=1)


def blur(maps: torch.Tensor, sigma: float = BLUR_SIGMA) -> torch.Tensor:
    """Separable Gaussian blur of maps (N, S, H, W), edges replicated."""
    k = torch.arange(-3, 4, dtype=torch.float32)
    g = torch.exp(-(k**2) / (2 * sigma**2))
    g = g / g.sum()
    n, s, h, w = maps.shape
    x = maps.reshape(n * s, 1, h, w)
    x = F.conv2d(F.pad(x, (3, 3, 0, 0), mode="replicate"), g.view(1, 1, 1, 7))
    x = F.conv2d(F.pad(x, (0, 0, 3, 3), mode="replicate"), g.view(1, 1, 7, 1))
    return x.reshape(n, s, h, w)


def _correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation over the last two dimensions."""
    a = a - a.mean((-2, -1), keepdim=True)
    b = b - b.mean((-2, -1), keepdim=True)
    return (a * b).sum((-2, -1)) / (a.norm(dim=(-2, -1)) * b.norm(dim=(-2, -1))).clamp_min(1e-6)


def shape_fits(images: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Fit (N, S) in [-1, 1] of each image's foreground (``mask``, default :func:`foreground`) with
    each shape's blurred template, the best over :data:`SCALES` (order :data:`world.SHAPES`)."""
    mask = foreground(images) if mask is None else mask
    fits = [_correlation(blur(templates(mask, scale)), mask[:, None]) for scale in SCALES]
    return torch.stack(fits).amax(0)


def read_shapes(images: torch.Tensor) -> list[str]:
    """The best-fitting shape of each image."""
    return [world.SHAPES[i] for i in shape_fits(images).argmax(1).tolist()]


class ShapeScorer:
    """``miniworld-shape``: half the prompted shape's template fit minus the best other shape's, toward -1
    when the image holds too little foreground (module docstring), (N,) in [-1, 1]. A prompt naming
    no shape scores 0."""

    needs_prompts = True
    name = "miniworld-shape"

    def __call__(self, outputs: torch.Tensor, prompts: Sequence[str],
                 metadata: Sequence[dict[str, Any]] | None = None) -> torch.Tensor:
        from scorers.base import check_images

        images = check_images(outputs, self.name).detach().cpu()
        mask = foreground(images)
        fits = shape_fits(images, mask)
        presence = ((mask >= 0.5).float().mean((1, 2)) / MIN_AREA).clamp(max=1.0)
        out = torch.zeros(len(fits))
        for i, prompt in enumerate(prompts):
            shape = world.parse_prompt(prompt)[1]
            if shape is None:
                continue
            j = world.SHAPES.index(shape)
            others = torch.cat([fits[i, :j], fits[i, j + 1 :]])
            out[i] = presence[i] * (fits[i, j] - others.max()) / 2 - (1 - presence[i])
        return out


def faithful(samples: Any, rewards: Sequence[float]) -> list[bool]:
    """A ranking filter fed by a second model (``ranking.filter:
    raft_diffusion.miniworld.shape_reward:faithful``): keep the images whose prompted shape fits
    best by this module's templates and whose prompted colour the miniworld CLIP names."""
    from raft_diffusion.miniworld.fidelity import shared_scorer

    margin = ShapeScorer()(samples.outputs, samples.texts)
    _, colour_ok = shared_scorer().correctness(samples.outputs, samples.texts)
    return [bool(m > 0 and c) for m, c in zip(margin.tolist(), colour_ok.tolist())]
