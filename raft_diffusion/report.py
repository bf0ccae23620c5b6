"""Pictures and tables of a run: image grids with captions, reward curves, per-prompt diversity."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Sequence

import torch

from raft_diffusion.core.atomic import atomic_path

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
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", compress_level=1)  # fast zlib level: a round writes many images


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
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)
    return path


def eval_dir(run_dir: Path, round_index: int) -> Path:
    """Where a run keeps the fixed-seed eval images of one eval round."""
    return Path(run_dir) / "eval" / f"round-{round_index:04d}"


def save_eval_images(run_dir: Path, round_index: int, images: torch.Tensor, ids: Sequence[str], prompts: Sequence[str],
                     scores: dict[str, Sequence[float]]) -> Path:
    """``eval/round-XXXX/<id>.png`` for (N, 3, H, W) images in [0, 1], and ``scores.json`` (ids, prompts,
    every scorer's N scores), written atomically; returns the folder."""
    import json

    folder = eval_dir(run_dir, round_index)
    folder.mkdir(parents=True, exist_ok=True)
    for image, sid in zip(images, ids):
        save_atomic_image(to_pil(image), folder / f"{sid}.png")
    with atomic_path(folder / "scores.json") as tmp:
        tmp.write_text(json.dumps({"ids": list(ids), "prompts": list(prompts),
                                   "scores": {k: [float(v) for v in vals] for k, vals in scores.items()}}))
    return folder


def before_after_grid(run_dir: Path, round_index: int, max_pairs: int = 16) -> Path | None:
    """``before_after.png``: each eval image of round 0 beside the same prompt and seed at ``round_index``,
    with the prompt and both rounds' scores under the pair. None when round 0 was not saved."""
    import json

    import numpy as np
    from PIL import Image

    before, after = eval_dir(run_dir, 0), eval_dir(run_dir, round_index)
    if round_index == 0 or not (before / "scores.json").is_file() or not (after / "scores.json").is_file():
        return None
    b, a = json.loads((before / "scores.json").read_text()), json.loads((after / "scores.json").read_text())
    names = [n for n in b["scores"] if n in a["scores"]][:2]
    prefix = os.path.commonprefix(names) if len(names) > 1 else ""
    short = {n: (n[len(prefix):] or n)[:9] for n in names}  # "miniworld-clip" -> "clip"
    tiles, captions = [], []
    for i, sid in enumerate(b["ids"][:max_pairs]):
        if sid not in a["ids"]:
            continue
        j = a["ids"].index(sid)
        for label, folder, data, k in (("r0", before, b, i), (f"r{round_index}", after, a, j)):
            img = Image.open(folder / f"{sid}.png").convert("RGB")
            tiles.append(torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255)
            figures = " ".join(f"{short[n]} {data['scores'][n][k]:.2f}" for n in names)
            captions.append(f"{b['prompts'][i] if label == 'r0' else ''}\n{label}: {figures}")
    if not tiles:
        return None
    grid = image_grid(torch.stack(tiles), captions, columns=min(8, len(tiles)), cell=192)
    path = Path(run_dir) / "before_after.png"
    save_atomic_image(grid, path)
    return path
