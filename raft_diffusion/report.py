"""Pictures and tables of a run: image grids with captions, reward curves, per-prompt diversity."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Sequence

import torch

log = logging.getLogger(__name__)


def to_pil(image: torch.Tensor):
    """(3, H, W) float in [0, 1] -> PIL RGB image."""
    from PIL import Image

    arr = (image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype("uint8")
    return Image.fromarray(arr)


def image_grid(images: torch.Tensor, captions: Sequence[str], columns: int, cell: int = 128):
    """A PIL grid of (N, 3, H, W) images, each upscaled to ``cell`` pixels with its caption under it."""
    from PIL import Image, ImageDraw, ImageFont

    n = images.shape[0]
    rows = math.ceil(n / columns)
    text_h = 26
    grid = Image.new("RGB", (columns * cell, rows * (cell + text_h)), "white")
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default()
    for i in range(n):
        r, c = divmod(i, columns)
        tile = to_pil(images[i]).resize((cell, cell), Image.NEAREST)
        grid.paste(tile, (c * cell, r * (cell + text_h)))
        lines = str(captions[i]).split("\n")
        for j, line in enumerate(lines[:2]):
            draw.text((c * cell + 2, r * (cell + text_h) + cell + 1 + 12 * j), line[: cell // 6], fill="black", font=font)
    return grid


def save_atomic_image(image, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    image.save(tmp, format="PNG", compress_level=1)  # fast zlib level: a round writes many images
    os.replace(tmp, path)


def diversity(images: torch.Tensor, groups: Sequence[int], size: int = 32) -> dict[int, float]:
    """Mean pairwise RMS pixel distance between the images of each group (0 = identical images).

    images (N, 3, H, W) in [0, 1] are resized to ``size`` first so the figure is resolution-free.
    """
    small = torch.nn.functional.interpolate(images.float(), size=(size, size), mode="area").flatten(1)
    out: dict[int, float] = {}
    for g in sorted(set(groups)):
        idx = [i for i, x in enumerate(groups) if x == g]
        if len(idx) < 2:
            continue
        x = small[idx]
        d = torch.cdist(x, x) / math.sqrt(x.shape[1])
        m = len(idx)
        out[g] = float(d.sum() / (m * (m - 1)))
    return out


def reward_curve(rows: Sequence[dict], path: Path, eval_rows: Sequence[dict] = (), scorer: str | None = None) -> Path:
    """Plot unbiased / kept / mean reward per round (and eval reward) to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    rounds = [r["round"] for r in rows]
    for key, label in (("reward_unbiased", "unbiased (first sample)"), ("reward_mean", "mean of all"), ("reward_kept", "kept set")):
        ax.plot(rounds, [r.get(key) if r.get(key) is not None else float("nan") for r in rows], marker="o", label=label)
    if eval_rows and scorer:
        ax.plot([e["round"] for e in eval_rows], [e.get(scorer, float("nan")) for e in eval_rows], marker="s", ls="--", label="eval prompts")
    ax.set_xlabel("round")
    ax.set_ylabel(scorer or "reward")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fig.savefig(tmp, format="png")
    plt.close(fig)
    os.replace(tmp, path)
    return path
